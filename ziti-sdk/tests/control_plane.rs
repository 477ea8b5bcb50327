//! Control plane against a real OpenZiti network (controller + router from `testnet`):
//! enrollment, OIDC and legacy authentication, token refresh, services with configs, sessions,
//! change events.

// Test binary: helpers may panic on setup failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use testnet::{TestNet, TestNetOptions, unique_name};
use ziti_sdk::controller::{
    ApiErrorCode, AuthMethod, Controller, ControllerConfig, ControllerError, TokenKind,
};
use ziti_sdk::enroll::{EnrollError, EnrollKeyType, EnrollOptions, enroll};
use ziti_sdk::identity::{Identity, KeyType};
use ziti_sdk::services::{InterceptAddress, Precedence, Protocol, ServiceEvent};
use ziti_sdk::session::SessionType;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ziti_sdk=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Creates an identity and enrolls it with our SDK; returns (name, identity file path).
fn sdk_identity(
    net: &TestNet,
    base: &str,
    attrs: &[&str],
    key: EnrollKeyType,
) -> Result<(String, PathBuf, Identity)> {
    let name = unique_name(base);
    let jwt_path = net.create_identity(&name, attrs)?;
    let jwt = std::fs::read_to_string(&jwt_path)?;
    let identity = runtime()
        .block_on(enroll(&jwt, EnrollOptions::with_key_type(key)))
        .with_context(|| format!("enrolling {name}"))?;
    let out = net.home().join(format!("{name}.json"));
    identity.save(&out)?;
    Ok((name, out, identity))
}

async fn connect(identity: &Identity, method: AuthMethod) -> Result<Controller> {
    Ok(Controller::connect(identity, ControllerConfig::with_auth_method(method)).await?)
}

/// Authenticates with `method` and proves the session works by listing services.
async fn assert_authenticates(
    identity: &Identity,
    method: AuthMethod,
    expected: TokenKind,
) -> Result<()> {
    let ctrl = connect(identity, method).await?;
    let token = ctrl.authenticate().await?;
    assert_eq!(token.kind(), expected);
    assert!(!token.secret().is_empty());
    assert_eq!(ctrl.current_access_token().await?.secret(), token.secret());
    if expected == TokenKind::Oidc {
        // An access-token JWT whose subject is this identity.
        let claims = token
            .secret()
            .split('.')
            .nth(1)
            .context("access token is not a JWT")?;
        use base64::Engine;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims.trim_end_matches('='))?,
        )?;
        assert_eq!(claims["sub"], identity.name(), "{claims}");
    }
    ctrl.services().await?;
    Ok(())
}

#[test]
fn sdk_enrolled_ec_and_rsa_identities_authenticate_with_oidc_and_legacy() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    for (key, expected_type) in [
        (EnrollKeyType::EcP256, KeyType::EcP256),
        (EnrollKeyType::Rsa2048, KeyType::Rsa(2048)),
    ] {
        let (_name, path, identity) = sdk_identity(net, "cp-auth", &[], key)?;
        assert_eq!(identity.key_type(), expected_type);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path)?.permissions().mode() & 0o777,
                0o600
            );
        }
        let loaded = Identity::load(&path)?;
        assert_eq!(
            loaded.client_api_url().as_str(),
            format!("{}/edge/client/v1", net.ctrl_url())
        );
        let rt = runtime();
        rt.block_on(assert_authenticates(
            &loaded,
            AuthMethod::Oidc,
            TokenKind::Oidc,
        ))?;
        rt.block_on(assert_authenticates(
            &loaded,
            AuthMethod::Legacy,
            TokenKind::Legacy,
        ))?;
        // Quickstart advertises OIDC_AUTH, so Auto picks OIDC like the upstream SDKs.
        rt.block_on(assert_authenticates(
            &loaded,
            AuthMethod::Auto,
            TokenKind::Oidc,
        ))?;
    }
    Ok(())
}

#[test]
fn cli_enrolled_identities_load_and_authenticate() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    for alg in ["RSA", "EC"] {
        let name = unique_name("cp-cli");
        let jwt = net.create_identity(&name, &[])?;
        let out = net.home().join(format!("{name}.json"));
        net.cli_enroll(&jwt, &out, alg)?;
        let identity =
            Identity::load(&out).with_context(|| format!("loading CLI identity ({alg})"))?;
        let rt = runtime();
        rt.block_on(assert_authenticates(
            &identity,
            AuthMethod::Oidc,
            TokenKind::Oidc,
        ))?;
        rt.block_on(assert_authenticates(
            &identity,
            AuthMethod::Legacy,
            TokenKind::Legacy,
        ))?;
    }
    Ok(())
}

#[test]
fn go_tunneler_accepts_an_sdk_enrolled_identity() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    let attr = unique_name("cp-go-host");
    let (_name, path, _) = sdk_identity(net, "cp-go", &[&attr], EnrollKeyType::EcP256)?;
    let svc = unique_name("cp-go-svc");
    let cfg = format!("{svc}-host");
    net.create_config(
        &cfg,
        "host.v1",
        r#"{"protocol":"tcp","address":"127.0.0.1","port":7}"#,
    )?;
    net.create_service(&svc, &[&cfg], &[], false)?;
    net.create_service_policy(
        &format!("{svc}-bind"),
        "Bind",
        &[&format!("@{svc}")],
        &[&format!("#{attr}")],
    )?;
    let mut tunnel = net.spawn_go_tunnel("host", &path, &[])?;
    // The Go tunneler only learns the service (and creates its terminator) after authenticating.
    tunnel.wait_for_log(Duration::from_secs(60), |log| log.contains(&svc))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let identity = Identity::load(&path)?;
    let rt = runtime();
    loop {
        let terms = rt.block_on(async {
            let ctrl = connect(&identity, AuthMethod::Oidc).await?;
            let s = ctrl
                .service_by_name(&svc)
                .await?
                .context("service not visible")?;
            Ok::<_, anyhow::Error>(ctrl.terminators(&s.id).await?)
        })?;
        if !terms.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "Go tunneler created no terminator; log:\n{}",
                tunnel.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = tunnel.log();
    assert!(!log.to_lowercase().contains("invalid_auth"), "{log}");
    Ok(())
}

#[test]
fn reused_token_is_reported_as_already_used() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    let name = unique_name("cp-reuse");
    let jwt = std::fs::read_to_string(net.create_identity(&name, &[])?)?;
    let rt = runtime();
    rt.block_on(enroll(&jwt, EnrollOptions::default()))?;
    let err = rt
        .block_on(enroll(&jwt, EnrollOptions::default()))
        .unwrap_err();
    assert!(matches!(err, EnrollError::AlreadyUsedOrUnknown), "{err:?}");
    assert!(err.to_string().contains("already used or unknown"), "{err}");
    Ok(())
}

/// Re-signs the JWT claims with a key the controller never had, and separately flips one
/// signature byte: both must fail before anything but the certificate probe is sent, which the
/// unchanged token proves by still enrolling afterwards.
#[test]
fn forged_tokens_are_refused_before_any_key_is_sent() -> Result<()> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    init_tracing();
    let net = TestNet::shared();
    let name = unique_name("cp-forged");
    let jwt = std::fs::read_to_string(net.create_identity(&name, &[])?)?;
    let jwt = jwt.trim();
    let (input, sig) = jwt.rsplit_once('.').context("jwt")?;
    let mut raw = URL_SAFE_NO_PAD.decode(sig)?;
    raw[10] ^= 0x01;
    let flipped = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&raw));

    // Same claims, header switched to ES256, signed by a fresh key.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .map_err(|_| anyhow::anyhow!("keygen"))?;
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|_| anyhow::anyhow!("key"))?;
    let claims = input.split('.').nth(1).context("claims")?;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
    let forged_input = format!("{header}.{claims}");
    let s = kp
        .sign(&rng, forged_input.as_bytes())
        .map_err(|_| anyhow::anyhow!("sign"))?;
    let resigned = format!("{forged_input}.{}", URL_SAFE_NO_PAD.encode(s.as_ref()));

    let rt = runtime();
    for bad in [&flipped, &resigned] {
        let err = rt
            .block_on(enroll(bad, EnrollOptions::default()))
            .unwrap_err();
        assert!(matches!(err, EnrollError::Untrusted(_)), "{err:?}");
        assert!(
            err.to_string().contains("not signed by the controller"),
            "{err}"
        );
    }
    // Nothing consumed the one-time token.
    let id = rt.block_on(enroll(jwt, EnrollOptions::default()))?;
    assert!(!id.name().is_empty());
    Ok(())
}

#[test]
fn expired_token_says_expired_locally_and_from_the_controller() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    let rt = runtime();
    // A second identity whose only enrollment is an OTT that expires in a few seconds.
    let name = unique_name("cp-expired");
    let first = std::fs::read_to_string(net.create_identity(&name, &[])?)?;
    rt.block_on(enroll(&first, EnrollOptions::default()))?;
    let jwt_path = net.create_enrollment_ott_expiring_in(&name, Duration::from_secs(8))?;
    let jwt = std::fs::read_to_string(jwt_path)?;
    // Wait until its `exp` (whole seconds; the controller holds the same instant) is past.
    let exp = jwt_exp(&jwt)?;
    let expired_at = std::time::UNIX_EPOCH + Duration::from_secs(exp + 1);
    while let Ok(left) = expired_at.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(100));
    }
    let err = rt
        .block_on(enroll(&jwt, EnrollOptions::default()))
        .unwrap_err();
    assert!(matches!(err, EnrollError::Expired { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("expired") && text.contains("ask your administrator"),
        "{text}"
    );
    // Now let the controller decide.
    let opts = EnrollOptions {
        check_expiry_locally: false,
        ..EnrollOptions::default()
    };
    let err = rt.block_on(enroll(&jwt, opts)).unwrap_err();
    match &err {
        EnrollError::Expired { detail } => assert!(detail.contains("controller"), "{detail}"),
        other => bail!("expected Expired from the controller, got {other:?}"),
    }
    Ok(())
}

/// The `exp` claim of a JWT, in seconds since the epoch.
fn jwt_exp(jwt: &str) -> Result<u64> {
    use base64::Engine;
    let claims = jwt.trim().split('.').nth(1).context("not a JWT")?;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims.trim_end_matches('='))?,
    )?;
    claims["exp"].as_u64().context("JWT without exp")
}

fn wait_event(
    rt: &tokio::runtime::Runtime,
    rx: &mut tokio::sync::mpsc::Receiver<ServiceEvent>,
    within: Duration,
    pred: impl Fn(&ServiceEvent) -> bool,
) -> Result<ServiceEvent> {
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) if pred(&ev) => return Ok(ev),
                Ok(Some(_)) => continue,
                Ok(None) => bail!("event stream ended"),
                Err(_) => bail!("no matching service event within {within:?}"),
            }
        }
    })
}

#[test]
fn services_configs_sessions_and_change_events() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    let attr = unique_name("cp-svc-clients");
    let (name, _path, identity) = sdk_identity(net, "cp-svc", &[&attr], EnrollKeyType::EcP256)?;
    let svc = unique_name("cp-svc-echo");
    let (intercept, host1, host2) = (format!("{svc}-i"), format!("{svc}-h1"), format!("{svc}-h2"));
    net.create_config(
        &intercept,
        "intercept.v1",
        r#"{"protocols":["tcp"],"addresses":["echo.ziti","*.echo.ziti","100.64.10.0/24"],"portRanges":[{"low":7,"high":7}]}"#,
    )?;
    net.create_config(
        &host1,
        "host.v1",
        r#"{"protocol":"tcp","address":"127.0.0.1","port":7007,"listenOptions":{"precedence":"required","cost":3}}"#,
    )?;
    net.create_config(
        &host2,
        "host.v2",
        r#"{"terminators":[{"protocol":"tcp","address":"a.local","port":1},{"protocol":"udp","address":"b.local","port":2}]}"#,
    )?;
    net.create_service(&svc, &[&intercept, &host1, &host2], &[&svc], true)?;
    let svc_role = format!("@{svc}");
    let id_role = format!("#{attr}");
    net.create_service_policy(&format!("{svc}-dial"), "Dial", &[&svc_role], &[&id_role])?;
    net.create_service_policy(&format!("{svc}-bind"), "Bind", &[&svc_role], &[&id_role])?;

    let rt = runtime();
    let ctrl = rt.block_on(connect(&identity, AuthMethod::Auto))?;
    let s = rt
        .block_on(ctrl.service_by_name(&svc))?
        .context("service not visible")?;
    assert!(s.permissions.dial && s.permissions.bind);
    assert!(s.encryption_required);
    let i = s
        .configs
        .intercept_v1
        .as_ref()
        .context("intercept.v1 missing")?;
    assert_eq!(i.protocols, [Protocol::Tcp]);
    assert_eq!(
        i.addresses[1],
        InterceptAddress::Wildcard("echo.ziti".into())
    );
    let h = s.configs.host_v1.as_ref().context("host.v1 missing")?;
    assert_eq!(h.port, Some(7007));
    assert_eq!(
        h.listen_options_or_default().precedence,
        Precedence::Required
    );
    assert_eq!(
        s.configs.host_terminators().len(),
        2,
        "host.v2 wins over host.v1"
    );
    let all = rt.block_on(ctrl.services())?;
    assert!(all.iter().any(|x| x.id == s.id));

    for kind in [SessionType::Dial, SessionType::Bind] {
        let session = rt.block_on(ctrl.create_session(&s.id, kind))?;
        assert!(!session.token.is_empty());
        assert!(
            session.edge_routers.iter().any(|r| r
                .tls_url()
                .is_some_and(|u| u.ends_with(&net.router().port.to_string()))),
            "{kind:?} session without the test router: {session:?}"
        );
        // Cached afterwards.
        assert_eq!(rt.block_on(ctrl.session(&s.id, kind))?.id, session.id);
    }
    let routers = rt.block_on(ctrl.service_edge_routers(&s.id))?;
    assert!(
        routers.iter().any(|r| r.name == net.router().name),
        "{routers:?}"
    );
    let routers = rt.block_on(ctrl.current_identity_edge_routers())?;
    assert!(
        routers.iter().any(|r| r.name == net.router().name),
        "{routers:?}"
    );
    assert!(rt.block_on(ctrl.terminators(&s.id))?.is_empty());

    // Sessions for a service without permission: a clear error code.
    let err = rt
        .block_on(ctrl.create_session("no-such-service", SessionType::Dial))
        .unwrap_err();
    let code = err.api_error().map(|e| e.code.clone());
    assert!(
        matches!(
            code,
            Some(ApiErrorCode::NotFound | ApiErrorCode::CouldNotValidate)
        ),
        "{err}"
    );

    // Change events.
    let interval = Duration::from_secs(1);
    let mut rx = {
        let _guard = rt.enter();
        ctrl.watch_services(interval)
    };
    wait_event(
        &rt,
        &mut rx,
        Duration::from_secs(30),
        |e| matches!(e, ServiceEvent::Added(x) if x.id == s.id),
    )?;
    let svc2 = unique_name("cp-svc-new");
    net.create_service(&svc2, &[&intercept], &[], false)?;
    net.create_service_policy(
        &format!("{svc2}-dial"),
        "Dial",
        &[&format!("@{svc2}")],
        &[&id_role],
    )?;
    // Each change is timed from the moment the controller has it (the CLI returned).
    let t0 = Instant::now();
    wait_event(
        &rt,
        &mut rx,
        Duration::from_secs(30),
        |e| matches!(e, ServiceEvent::Added(x) if x.name == svc2),
    )?;
    let added_after = t0.elapsed();
    // Removing the identity's attribute takes both services away.
    net.update_identity_attrs(&name, &[])?;
    let t0 = Instant::now();
    wait_event(
        &rt,
        &mut rx,
        Duration::from_secs(30),
        |e| matches!(e, ServiceEvent::Removed(x) if x.id == s.id),
    )?;
    let removed_after = t0.elapsed();
    eprintln!("service events: added after {added_after:?}, removed after {removed_after:?}");
    // A poll interval plus listing latency, even on a loaded machine; the periodic full re-list
    // comes only every 10 polls (10 s or more), so this proves `service-updates` drives the
    // events.
    for (what, d) in [("added", added_after), ("removed", removed_after)] {
        assert!(d < interval * 7, "{what} event took {d:?}");
    }
    Ok(())
}

#[test]
fn oidc_tokens_refresh_and_are_published() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    let (_name, _path, identity) = sdk_identity(net, "cp-refresh", &[], EnrollKeyType::EcP256)?;
    let rt = runtime();
    rt.block_on(async {
        let cfg = ControllerConfig {
            auth_method: AuthMethod::Oidc,
            refresh_interval_override: Some(Duration::from_millis(1500)),
            ..ControllerConfig::default()
        };
        let ctrl = Controller::connect(&identity, cfg).await?;
        let mut watch = ctrl.token_watch();
        let first = ctrl.authenticate().await?;
        let mut seen = vec![first.secret().to_string()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < 3 {
            tokio::time::timeout_at(deadline, watch.changed())
                .await
                .context("no token refresh published in time")??;
            let t = watch.borrow_and_update().clone().context("token cleared")?;
            assert_eq!(t.kind(), TokenKind::Oidc);
            if seen.last().map(String::as_str) != Some(t.secret()) {
                seen.push(t.secret().to_string());
            }
        }
        // The refreshed token is the one in use, and it works.
        assert_eq!(ctrl.current_access_token().await?.secret(), seen[2]);
        ctrl.services().await?;
        Ok::<_, anyhow::Error>(())
    })
}

/// OIDC refresh driven by the controller's real token lifetime (a network of its own whose access
/// tokens live one minute, the controller's minimum), with no test override of the refresh
/// schedule.
#[test]
fn access_tokens_are_refreshed_before_they_expire() -> Result<()> {
    init_tracing();
    let net = TestNet::start_with(&TestNetOptions {
        access_token_duration: Some("1m".into()),
        ..TestNetOptions::default()
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
        // The lifetime the controller granted (one minute, not the default) is visible to
        // callers.
        let first_expiry = first.expires_at().context("no expiry")?;
        let left = first_expiry
            .duration_since(SystemTime::now())
            .context("the new token has already expired")?;
        assert!(left <= Duration::from_secs(61), "{left:?}");
        watch.borrow_and_update();
        let started = tokio::time::Instant::now();
        tokio::time::timeout(left, watch.changed())
            .await
            .context("the token was not refreshed before it expired")??;
        let waited = started.elapsed();
        let refreshed_at = SystemTime::now();
        let second = watch.borrow().clone().context("token cleared")?;
        assert_ne!(second.secret(), first.secret());
        assert!(
            refreshed_at < first_expiry,
            "refreshed before the old token expired"
        );
        assert!(
            second.expires_at().context("no expiry")? > first_expiry,
            "the new token outlives the old one"
        );
        // Not at once: the schedule follows the granted lifetime (half of it by default; timers
        // fire late on a loaded machine, never early).
        assert!(waited > Duration::from_secs(20), "{waited:?}");
        ctrl.services().await?;
        Ok(())
    })
}

#[test]
fn unreachable_controller_names_url_and_port() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    let (_name, _path, identity) = sdk_identity(net, "cp-unreach", &[], EnrollKeyType::EcP256)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let moved = Identity::from_pem(
        &format!("https://127.0.0.1:{port}"),
        identity.cert_chain_pem(),
        &key_pem_of(&_path)?,
        identity.ca_pem(),
    )?;
    let err = runtime()
        .block_on(Controller::connect(&moved, ControllerConfig::default()))
        .unwrap_err();
    assert!(matches!(err, ControllerError::Unreachable(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot reach controller at https://127.0.0.1:{port}: connection refused")
    );
    Ok(())
}

fn key_pem_of(path: &Path) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    Ok(v["id"]["key"]
        .as_str()
        .context("key")?
        .trim_start_matches("pem:")
        .to_string())
}

/// Legacy sessions are extended in place (same token), and a session killed on the controller is
/// replaced transparently on the next call (401 -> new login -> retry), with the new token
/// published to watchers.
#[test]
fn legacy_session_refreshes_and_recovers_from_401() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    let (_name, _path, identity) = sdk_identity(net, "cp-legacy", &[], EnrollKeyType::EcP256)?;
    let rt = runtime();
    rt.block_on(async {
        let cfg = ControllerConfig {
            auth_method: AuthMethod::Legacy,
            refresh_interval_override: Some(Duration::from_millis(500)),
            ..ControllerConfig::default()
        };
        let ctrl = Controller::connect(&identity, cfg).await?;
        let first = ctrl.authenticate().await?;
        assert_eq!(first.kind(), TokenKind::Legacy);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Several refreshes later the token is unchanged and still accepted.
        assert_eq!(ctrl.current_access_token().await?.secret(), first.secret());
        ctrl.services().await?;

        // Kill the API session behind the controller object's back.
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(identity.rustls_client_config(&[b"http/1.1"])?)
            .build()?;
        let resp = http
            .delete(format!("{}/current-api-session", ctrl.api_url()))
            .header("zt-session", first.secret())
            .send()
            .await?;
        assert!(resp.status().is_success(), "logout: {}", resp.status());
        let mut watch = ctrl.token_watch();
        watch.borrow_and_update();
        ctrl.services().await?;
        let now = ctrl.current_access_token().await?;
        assert_ne!(
            now.secret(),
            first.secret(),
            "a new session replaced the dead one"
        );
        assert!(watch.has_changed()?, "the new token was published");
        Ok::<_, anyhow::Error>(())
    })
}

/// A deleted identity gets a typed INVALID_AUTH error with a readable message, for both flows.
#[test]
fn deleted_identity_fails_with_invalid_auth() -> Result<()> {
    init_tracing();
    let net = TestNet::shared();
    let (name, _path, identity) = sdk_identity(net, "cp-deleted", &[], EnrollKeyType::EcP256)?;
    net.delete("identity", &name)?;
    let rt = runtime();
    for method in [AuthMethod::Oidc, AuthMethod::Legacy] {
        let err = rt
            .block_on(async {
                connect(&identity, method)
                    .await?
                    .authenticate()
                    .await
                    .map_err(anyhow::Error::from)
            })
            .unwrap_err();
        let err = err.downcast::<ControllerError>()?;
        let api = err.api_error().context("no API error")?;
        assert_eq!(api.status, 401, "{err}");
        assert_eq!(api.code, ApiErrorCode::InvalidAuth, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("authentication failed") && text.contains("did not accept this identity"),
            "{text}"
        );
        eprintln!("{method:?}: {text}");
    }
    Ok(())
}
