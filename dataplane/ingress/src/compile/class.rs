//! Which Ingresses this controller serves: IngressClass semantics as Kubernetes defines them.
//!
//! An Ingress is ours when
//! - its `spec.ingressClassName` names an IngressClass whose `spec.controller` is our controller name
//!   (`skiff.dev/ingress-controller` by default), or names our configured class when no IngressClass of that name
//!   exists (standalone files need not carry one, like ingress-nginx's `--ingress-class`);
//! - it has no class name but the deprecated `kubernetes.io/ingress.class` annotation names one as above;
//! - it has neither, and one of our IngressClasses carries `ingressclass.kubernetes.io/is-default-class: "true"`.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The annotation that marks the cluster's default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The deprecated annotation that names a class before `spec.ingressClassName` existed.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Decides class membership for one set of IngressClasses.
#[derive(Debug)]
pub struct ClassFilter<'a> {
    classes: &'a [IngressClass],
    controller: &'a str,
    class_name: &'a str,
    default_is_ours: bool,
}

impl<'a> ClassFilter<'a> {
    /// A filter for `controller`, with `class_name` as the class served when no IngressClass object names it.
    pub fn new(classes: &'a [IngressClass], controller: &'a str, class_name: &'a str) -> Self {
        let default_is_ours = classes.iter().any(|c| {
            is_ours(c, controller)
                && c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).map(String::as_str)
                    == Some("true")
        });
        ClassFilter { classes, controller, class_name, default_is_ours }
    }

    /// Whether the Ingress belongs to this controller.
    pub fn accepts(&self, ingress: &Ingress) -> bool {
        let named = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).or_else(|| {
            ingress.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)).map(String::as_str)
        });
        match named {
            Some(name) => match self.classes.iter().find(|c| c.metadata.name.as_deref() == Some(name)) {
                Some(class) => is_ours(class, self.controller),
                None => name == self.class_name,
            },
            None => self.default_is_ours,
        }
    }
}

fn is_ours(class: &IngressClass, controller: &str) -> bool {
    class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(controller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, controller: &str, default: bool) -> IngressClass {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": if default {
                serde_json::json!({DEFAULT_CLASS_ANNOTATION: "true"}) } else { serde_json::json!({}) }},
            "spec": {"controller": controller}
        }))
        .expect("class")
    }

    fn ingress(class_name: Option<&str>, legacy: Option<&str>) -> Ingress {
        let mut v = serde_json::json!({"metadata": {"name": "i"}, "spec": {}});
        if let Some(c) = class_name {
            v["spec"]["ingressClassName"] = c.into();
        }
        if let Some(l) = legacy {
            v["metadata"]["annotations"] = serde_json::json!({LEGACY_CLASS_ANNOTATION: l});
        }
        serde_json::from_value(v).expect("ingress")
    }

    const OURS: &str = "skiff.dev/ingress-controller";

    #[test]
    fn a_class_is_ours_by_its_controller_name_not_its_own_name() {
        let classes = [class("public", OURS, false), class("skiff", "k8s.io/ingress-nginx", false)];
        let f = ClassFilter::new(&classes, OURS, "skiff");
        assert!(f.accepts(&ingress(Some("public"), None)));
        assert!(!f.accepts(&ingress(Some("skiff"), None)), "an IngressClass named skiff of another controller");
        assert!(!f.accepts(&ingress(Some("other"), None)));
    }

    #[test]
    fn the_configured_class_is_served_when_no_ingress_class_object_exists() {
        let f = ClassFilter::new(&[], OURS, "skiff");
        assert!(f.accepts(&ingress(Some("skiff"), None)));
        assert!(f.accepts(&ingress(None, Some("skiff"))), "the legacy annotation counts");
        assert!(!f.accepts(&ingress(None, None)), "no default class");
    }

    #[test]
    fn ingresses_without_a_class_go_to_the_default_class_only_if_it_is_ours() {
        let ours = [class("skiff", OURS, true)];
        assert!(ClassFilter::new(&ours, OURS, "skiff").accepts(&ingress(None, None)));
        let theirs = [class("nginx", "k8s.io/ingress-nginx", true), class("skiff", OURS, false)];
        assert!(!ClassFilter::new(&theirs, OURS, "skiff").accepts(&ingress(None, None)));
    }
}
