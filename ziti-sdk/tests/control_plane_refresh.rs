//! OIDC refresh driven by the controller's real token lifetime (a network whose access tokens
//! live one minute), with no test override of the refresh schedule.

// Test binary: helpers may panic on setup failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use testnet::{TestNet, TestNetOptions, unique_name};
use ziti_sdk::controller::{AuthMethod, Controller, ControllerConfig, TokenKind};
use ziti_sdk::enroll::{EnrollOptions, enroll};

#[test]
fn one_minute_tokens_are_refreshed_at_half_life() -> Result<()> {
    let net = TestNet::start_with(&TestNetOptions {
        access_token_duration: Some("1m".into()),
    })?;
    let name = unique_name("cpr-short");
    let jwt = std::fs::read_to_string(net.create_identity(&name, &[])?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let identity = enroll(&jwt, EnrollOptions::default()).await?;
        let ctrl = Controller::connect(
            &identity,
            ControllerConfig::with_auth_method(AuthMethod::Oidc),
        )
        .await?;
        let mut watch = ctrl.token_watch();
        let first = ctrl.authenticate().await?;
        assert_eq!(first.kind(), TokenKind::Oidc);
        // The lifetime the controller granted is visible to callers.
        let left = first
            .expires_at()
            .context("no expiry")?
            .duration_since(SystemTime::now())?;
        assert!(
            left > Duration::from_secs(40) && left <= Duration::from_secs(61),
            "{left:?}"
        );
        watch.borrow_and_update();
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(45), watch.changed())
            .await
            .context("no refresh within 45 s")??;
        let waited = started.elapsed();
        let second = watch.borrow().clone().context("token cleared")?;
        assert_ne!(second.secret(), first.secret());
        // Half of 60 s: not at once, and well before expiry.
        assert!(
            waited > Duration::from_secs(20) && waited < Duration::from_secs(40),
            "{waited:?}"
        );
        ctrl.services().await?;
        Ok(())
    })
}
