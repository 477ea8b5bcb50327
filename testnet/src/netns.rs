//! Tests that need a TUN device or their own addresses run in a network namespace of their
//! own, so they never touch the host's network.

/// Runs `body` on a thread that first enters a new network namespace with loopback up; a
/// panic in `body` is the caller's panic. Processes started from `body` (the test network,
/// `zt-tunnel`, the Go tunneler) inherit the namespace.
pub fn in_new_netns(body: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) (needs CAP_SYS_ADMIN): {}",
            std::io::Error::last_os_error()
        );
        // A child forked from this thread is in the new namespace.
        let status = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "ip link set lo up: {status:?}"
        );
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
