//! The files a pod gets in `/etc` (`hosts`, `resolv.conf`, `hostname`) and the container's user, as pure functions.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};

/// The pod's host name (`spec.hostname` or the pod name, at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let h =
        pod.spec.as_ref().and_then(|s| s.hostname.clone()).or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    h.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_string()
}

/// `/etc/hosts`: localhost, the pod's own name (with its subdomain FQDN if any) and `hostAliases`.
pub fn hosts_file(pod: &Pod, ip: Option<Ipv4Addr>, domain: &str) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let name = hostname(pod);
    if let Some(ip) = ip {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        match pod.spec.as_ref().and_then(|s| s.subdomain.clone()).filter(|d| !d.is_empty()) {
            Some(sub) => s.push_str(&format!("{ip}\t{name}.{sub}.{ns}.svc.{domain}\t{name}\n")),
            None => s.push_str(&format!("{ip}\t{name}\n")),
        }
    }
    for a in pod.spec.as_ref().and_then(|s| s.host_aliases.clone()).unwrap_or_default() {
        let names = a.hostnames.unwrap_or_default();
        if !names.is_empty() {
            s.push_str(&format!("\n# Entries added by HostAliases.\n{}\t{}\n", a.ip, names.join("\t")));
        }
    }
    s
}

/// `/etc/resolv.conf` for `dnsPolicy` ClusterFirst (the default), Default (the node's file) and None, merged with
/// `dnsConfig`.
pub fn resolv_conf(pod: &Pod, dns: Ipv4Addr, domain: &str, node_resolv: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = policy == "ClusterFirst" || (policy == "ClusterFirstWithHostNet");
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) = match policy {
        "None" => (vec![], vec![], vec![]),
        "Default" => {
            let mut sv = vec![];
            let mut se = vec![];
            let mut op = vec![];
            for l in node_resolv.lines() {
                let mut w = l.split_whitespace();
                match w.next() {
                    Some("nameserver") => sv.extend(w.next().map(str::to_string)),
                    Some("search") => se.extend(w.map(str::to_string)),
                    Some("options") => op.extend(w.map(str::to_string)),
                    _ => {}
                }
            }
            (sv, se, op)
        }
        _ if spec.host_network == Some(true) && !cluster_first => (vec![], vec![], vec![]),
        _ => (
            vec![dns.to_string()],
            vec![format!("{ns}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()],
            vec!["ndots:5".to_string()],
        ),
    };
    if let Some(c) = spec.dns_config {
        servers.extend(c.nameservers.unwrap_or_default());
        searches.extend(c.searches.unwrap_or_default());
        for o in c.options.unwrap_or_default() {
            let entry = match o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            let key = entry.split(':').next().unwrap_or_default().to_string();
            options.retain(|x| x.split(':').next() != Some(key.as_str()));
            options.push(entry);
        }
    }
    let mut s = String::new();
    for sv in servers.iter().take(3) {
        s.push_str(&format!("nameserver {sv}\n"));
    }
    if !searches.is_empty() {
        s.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

fn lookup_id(db: &str, name: &str) -> Option<(u32, u32)> {
    db.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0))))?
    })
}

/// The container's uid and gid: the security context wins over the image's `USER` (`uid`, `uid:gid`, `name`,
/// `name:group`, names looked up in the image's `/etc/passwd` and `/etc/group`).
pub fn user(
    pod: &Pod,
    c: &Container,
    image_user: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<(u32, u32), String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let csc = c.security_context.clone().unwrap_or_default();
    let run_as_user = csc.run_as_user.or(psc.run_as_user);
    let run_as_group = csc.run_as_group.or(psc.run_as_group);
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(u) = image_user.filter(|u| !u.is_empty()) {
        let (un, gn) = u.split_once(':').map_or((u, None), |(a, b)| (a, Some(b)));
        match un.parse::<u32>() {
            Ok(n) => {
                uid = n;
                gid = lookup_passwd_gid(passwd, n).unwrap_or(0);
            }
            Err(_) => {
                let (u2, g2) = lookup_id(passwd, un)
                    .ok_or_else(|| format!("unable to find user {un}: no matching entries in passwd file"))?;
                uid = u2;
                gid = g2;
            }
        }
        if let Some(g) = gn {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => lookup_id(group, g)
                    .map(|(gid, _)| gid)
                    .ok_or_else(|| format!("unable to find group {g}: no matching entries in group file"))?,
            };
        }
    }
    if let Some(u) = run_as_user {
        uid = u32::try_from(u).map_err(|_| format!("invalid runAsUser {u}"))?;
        if run_as_group.is_none() {
            gid = lookup_passwd_gid(passwd, uid).unwrap_or(gid);
        }
    }
    if let Some(g) = run_as_group {
        gid = u32::try_from(g).map_err(|_| format!("invalid runAsGroup {g}"))?;
    }
    let non_root = csc.run_as_non_root.or(psc.run_as_non_root) == Some(true);
    if non_root && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    Ok((uid, gid))
}

fn lookup_passwd_gid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f.get(3)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, SecurityContext};

    fn pod(ns: &str, name: &str) -> Pod {
        let mut p = Pod { spec: Some(PodSpec::default()), ..Default::default() };
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some(ns.into());
        p
    }

    #[test]
    fn cluster_first_pods_search_their_namespace_first() {
        let r = resolv_conf(&pod("shop", "web"), Ipv4Addr::new(10, 96, 0, 10), "cluster.local", "");
        assert_eq!(
            r,
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn dns_config_adds_to_and_overrides_the_policy() {
        use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption};
        let mut p = pod("a", "b");
        p.spec.as_mut().expect("spec").dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["1.2.3.4".into()]),
            searches: Some(vec!["x.test".into()]),
            options: Some(vec![PodDNSConfigOption { name: Some("ndots".into()), value: Some("2".into()) }]),
        });
        let r = resolv_conf(&p, Ipv4Addr::new(10, 96, 0, 10), "cluster.local", "");
        assert!(r.contains("nameserver 10.96.0.10\nnameserver 1.2.3.4\n"), "{r}");
        assert!(r.contains("cluster.local x.test\n"), "{r}");
        assert!(r.ends_with("options ndots:2\n"), "{r}");
    }

    #[test]
    fn hosts_name_the_pod_with_its_subdomain() {
        let mut p = pod("db", "pg-0");
        p.spec.as_mut().expect("spec").subdomain = Some("pg".into());
        let h = hosts_file(&p, Some(Ipv4Addr::new(10, 244, 1, 7)), "cluster.local");
        assert!(h.contains("10.244.1.7\tpg-0.pg.db.svc.cluster.local\tpg-0\n"), "{h}");
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn users_come_from_the_security_context_or_the_image() {
        let passwd = "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        let p = pod("a", "b");
        let c = Container::default();
        assert_eq!(user(&p, &c, None, passwd, group), Ok((0, 0)));
        assert_eq!(user(&p, &c, Some("www"), passwd, group), Ok((33, 33)));
        assert_eq!(user(&p, &c, Some("www:staff"), passwd, group), Ok((33, 50)));
        assert_eq!(user(&p, &c, Some("1000:1000"), passwd, group), Ok((1000, 1000)));
        assert!(user(&p, &c, Some("nobody-here"), passwd, group).is_err());
        let mut p2 = p.clone();
        p2.spec.as_mut().expect("spec").security_context =
            Some(PodSecurityContext { run_as_user: Some(33), ..Default::default() });
        assert_eq!(user(&p2, &c, Some("1000"), passwd, group), Ok((33, 33)));
        let c2 = Container {
            security_context: Some(SecurityContext {
                run_as_user: Some(7),
                run_as_group: Some(8),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(user(&p2, &c2, None, passwd, group), Ok((7, 8)));
        let c3 = Container {
            security_context: Some(SecurityContext { run_as_non_root: Some(true), ..Default::default() }),
            ..Default::default()
        };
        assert!(user(&p, &c3, None, passwd, group).is_err());
    }
}
