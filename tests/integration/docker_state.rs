//! The Docker plugin's state when a network goes (root: removing an orphan's links enters a
//! network namespace with setns, the host's when the endpoint's is gone, which needs
//! CAP_SYS_ADMIN). Moved here from the library's unit tests, which run without root.
use xmacvlan::control::docker::{delete_network, name_of, orphans};
use xmacvlan::control::state::Store;
use xmacvlan::control::{Endpoint, Network, State};

/// Docker deletes a network only when it has no endpoints on it: records it still has
/// (a DeleteEndpoint that found no daemon) go with it.
#[test]
fn delete_network_takes_orphans_with_it() {
    let root = std::env::temp_dir().join(format!("xmv-dk-orphans-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (net_id, ep_id) = ("ab".repeat(32), "cd".repeat(32));
    let (store, mut state) = Store::lock(&root).unwrap();
    state.networks.push(Network {
        id: net_id.clone(),
        name: name_of(&net_id),
        driver: "macvlan".into(),
        parent: "xmv-gone0".into(),
        link: "xmv-gone0".into(),
        vlan: 0,
        created_parent: false,
        mode: Default::default(),
        subnets: vec![],
        host_shim: None,
        dhcp: false,
        mtu: None,
        options: Default::default(),
        created: 0,
    });
    state.endpoints.push(Endpoint {
        name: name_of(&ep_id),
        network: name_of(&net_id),
        vlan: 0,
        mac: [2, 0x42, 198, 18, 0, 2],
        addresses: vec![],
        gateways: vec![],
        netns: "/nonexistent/netns/gone".into(),
        ifname: "eth0".into(),
        created: 0,
        mtu: None,
        lease: None,
    });
    store.save(&state).unwrap();
    drop(store);
    assert_eq!(orphans(&root, &net_id).unwrap(), [name_of(&ep_id)]);
    let removed = delete_network(&root, &net_id).unwrap().unwrap();
    assert_eq!(removed.id, net_id);
    let state = State::load(&root).unwrap();
    assert!(
        state.networks.is_empty() && state.endpoints.is_empty(),
        "{state:?}"
    );
    assert!(
        delete_network(&root, &net_id).unwrap().is_none(),
        "gone is gone"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
