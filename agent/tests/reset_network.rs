//! `skiff agent reset` and a bridge shared by two agents: resetting one removes its own veths but keeps the bridge
//! while another agent's veth is attached to it, and removes the bridge once nothing else is. (It used to delete
//! the bridge, and with it the other agent's pods' network.) In a network namespace this test creates. Needs root.

use skiff_agent::cleanup::remove_network;
use skiff_testkit::{NetNs, require_privileges};

fn links(ns: &NetNs) -> String {
    ns.ip(&["-o", "link", "show"]).expect("ip link")
}

#[test]
fn a_bridge_with_another_agents_veths_is_kept() {
    if !require_privileges("the reset network test") {
        return;
    }
    let ns = NetNs::new("skrst").expect("netns");
    ns.ip(&["link", "add", "skbr0", "type", "bridge"]).expect("bridge");
    for (veth, peer) in [("vethours", "vethours-p"), ("veththeirs", "veththeirs-p")] {
        ns.ip(&["link", "add", veth, "type", "veth", "peer", "name", peer]).expect("veth");
        ns.ip(&["link", "set", veth, "master", "skbr0"]).expect("attach");
    }
    let ours = vec!["vethours".to_string()];
    let foreign = ns
        .enter(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let handle = skiff_agent::network::connect().expect("netlink");
                remove_network(&handle, "skbr0", &ours).await
            })
        })
        .expect("inside the namespace");
    assert_eq!(foreign, vec!["veththeirs".to_string()]);
    let l = links(&ns);
    assert!(l.contains("skbr0"), "the shared bridge stays:\n{l}");
    assert!(!l.contains("vethours"), "our veth goes:\n{l}");
    assert!(l.contains("veththeirs"), "theirs stays:\n{l}");

    // once the other agent's veth is gone, the bridge goes with the last reset
    ns.ip(&["link", "del", "veththeirs"]).expect("del");
    let foreign = ns
        .enter(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let handle = skiff_agent::network::connect().expect("netlink");
                remove_network(&handle, "skbr0", &[]).await
            })
        })
        .expect("inside the namespace");
    assert!(foreign.is_empty(), "{foreign:?}");
    assert!(!links(&ns).contains("skbr0"), "{}", links(&ns));
}
