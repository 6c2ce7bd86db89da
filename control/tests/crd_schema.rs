//! Custom resources against their CRD's structural schema with the real kubectl (issue 11): validation with field
//! paths (422), unknown fields refused under kubectl's strict validation and pruned otherwise, defaults, printer
//! columns, and the status and scale subresources.

mod common;

use std::time::Duration;

use common::Cluster;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              color: {type: string, enum: [red, blue], default: red}
              replicas: {type: integer, default: 1}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status:
            type: object
            properties:
              replicas: {type: integer}
"#;

fn widget(spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: w}}\nspec: {spec}\n")
}

#[test]
fn custom_resources_follow_their_structural_schema() {
    let c = Cluster::start_with(None);
    // a schema that is not structural (a property without a type) is refused before anything is served
    let loose = CRD.replace("size: {type: integer, minimum: 1, maximum: 10}", "size: {minimum: 1}");
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(&loose));
    assert!(err.contains("properties[spec].properties[size].type: Required value"), "{err}");
    c.kubectl_in(&["apply", "-f", "-"], CRD);
    c.kubectl(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s"]);
    c.eventually("widgets are served", Duration::from_secs(10), || {
        c.kubectl_output(&["get", "widgets"], None).status.success()
    });

    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(&widget("{size: big}")));
    assert!(
        err.contains(r#"spec.size: Invalid value: "big": spec.size in body must be of type integer: "string""#),
        "{err}"
    );
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(&widget("{size: 11, color: green}")));
    assert!(err.contains("spec.size in body should be less than or equal to 10"), "{err}");
    assert!(err.contains(r#"spec.color: Unsupported value: "green""#), "{err}");
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(&widget("{color: blue}")));
    assert!(err.contains("spec.size: Required value"), "{err}");
    assert!(!c.kubectl_output(&["get", "widget", "w"], None).status.success(), "nothing invalid was stored");

    // kubectl validates strictly by default: an unknown field is refused; without validation it is pruned
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(&widget("{size: 3, junk: 1}")));
    assert!(err.contains(r#"unknown field "spec.junk""#), "{err}");
    c.kubectl_in(&["apply", "--validate=false", "-f", "-"], &widget("{size: 3, junk: 1, extra: {any: {thing: 1}}}"));
    let w = c.get_json(&["widget", "w"]);
    assert!(w["spec"].get("junk").is_none(), "pruned: {w}");
    assert_eq!(w["spec"]["extra"]["any"]["thing"], 1, "preserved where the schema says so");
    assert_eq!(w["spec"]["color"], "red", "defaulted");
    assert_eq!(w["spec"]["replicas"], 1, "defaulted");

    let table = c.kubectl(&["get", "wd"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("SIZE") && header.contains("COLOR"), "{table}");
    assert!(table.lines().nth(1).is_some_and(|l| l.contains(" 3 ") && l.contains("red")), "{table}");

    c.kubectl(&["scale", "widget", "w", "--replicas=4"]);
    assert_eq!(c.get_json(&["widget", "w"])["spec"]["replicas"], 4);
    c.kubectl(&["patch", "widget", "w", "--subresource=status", "--type=merge", "-p", r#"{"status":{"replicas":4}}"#]);
    assert_eq!(c.get_json(&["widget", "w"])["status"]["replicas"], 4);
    let err = c.kubectl_fails(
        &["patch", "widget", "w", "--subresource=status", "--type=merge", "-p", r#"{"status":{"replicas":"x"}}"#],
        None,
    );
    assert!(err.contains("status.replicas in body must be of type integer"), "{err}");
}
