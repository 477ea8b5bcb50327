//! The test network itself: it starts, the router comes online, the CLI works, and nothing it
//! started survives it.

use testnet::TestNet;

/// One network for both checks (each start costs seconds of CPU on a loaded machine).
#[test]
fn network_starts_works_and_dropping_it_kills_its_processes() {
    let net = TestNet::start().unwrap();
    assert!(net.router_online().unwrap(), "router should be online");
    let version = net
        .ziti(&["--version"])
        .or_else(|_| net.ziti(&["version"]))
        .unwrap();
    assert!(!version.trim().is_empty());
    let jwt = net
        .create_identity(&testnet::unique_name("smoke"), &["smoke"])
        .unwrap();
    let text = std::fs::read_to_string(jwt).unwrap();
    assert_eq!(
        text.trim().split('.').count(),
        3,
        "enrollment JWT has three parts"
    );

    let home = net.home().to_path_buf();
    let pids = pids_mentioning(&home);
    assert!(
        pids.len() >= 2,
        "controller and router should be running: {pids:?}"
    );
    drop(net);
    // Killed processes vanish from /proc once the kernel has reaped them; allow a loaded machine
    // its time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut left = pids_mentioning(&home);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = pids_mentioning(&home);
    }
    assert!(left.is_empty(), "processes survived the network: {left:?}");
    assert!(!home.exists(), "network home should be removed");
}

/// Processes whose command line mentions `needle` (our children all get the home path as an
/// argument or config path).
fn pids_mentioning(needle: &std::path::Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}
