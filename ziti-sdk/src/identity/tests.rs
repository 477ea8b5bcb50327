use super::test_pki::{TestCa, keys};
use super::*;

fn identity_json(api: &str, cert: &str, key: &str, ca: &str) -> String {
    serde_json::json!({
        "ztAPI": api,
        "id": { "cert": cert, "key": key, "ca": ca },
    })
    .to_string()
}

#[test]
fn loads_every_key_type_and_encoding() {
    let ca = TestCa::new("test-ca");
    let cases = [
        (keys::P256_SEC1, keys::P256_PKCS8, KeyType::EcP256),
        (keys::P256_PKCS8, keys::P256_PKCS8, KeyType::EcP256),
        (keys::P384_SEC1, keys::P384_PKCS8, KeyType::EcP384),
        (keys::P384_PKCS8, keys::P384_PKCS8, KeyType::EcP384),
        (keys::RSA_PKCS1, keys::RSA_PKCS8, KeyType::Rsa(2048)),
        (keys::RSA_PKCS8, keys::RSA_PKCS8, KeyType::Rsa(2048)),
    ];
    for (key_pem, pkcs8, expected) in cases {
        let cert = ca.client_cert("id-1", pkcs8);
        // Inline with `pem:` prefix.
        let json = identity_json(
            "https://127.0.0.1:1280/edge/client/v1",
            &format!("pem:{cert}"),
            &format!("pem:{key_pem}"),
            &format!("pem:{}", ca.pem),
        );
        let id = Identity::from_json(&json, None).unwrap();
        assert_eq!(id.key_type(), expected);
        assert_eq!(id.name(), "id-1");
        // Raw PEM without prefix (what the C SDK writes).
        let json = identity_json("https://127.0.0.1:1280", &cert, key_pem, &ca.pem);
        let id = Identity::from_json(&json, None).unwrap();
        assert_eq!(id.key_type(), expected);
    }
}

#[test]
fn loads_file_url_and_relative_paths() {
    let ca = TestCa::new("test-ca");
    let cert = ca.client_cert("id-2", keys::P256_PKCS8);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), keys::P256_SEC1).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let key_url = url::Url::from_file_path(dir.path().join("key.pem")).unwrap();
    let json = identity_json(
        "https://ctrl.example:1280/",
        "cert.pem",
        key_url.as_str(),
        dir.path().join("ca.pem").to_str().unwrap(),
    );
    let path = dir.path().join("id.json");
    std::fs::write(&path, json).unwrap();
    let id = Identity::load(&path).unwrap();
    assert_eq!(
        id.client_api_url().as_str(),
        "https://ctrl.example:1280/edge/client/v1"
    );
    assert_eq!(id.cert_chain_pem(), cert);
}

#[test]
fn zt_apis_wins_when_non_empty() {
    let ca = TestCa::new("test-ca");
    let cert = ca.client_cert("id-3", keys::P256_PKCS8);
    let json = serde_json::json!({
        "ztAPI": "https://a:1280/edge/client/v1",
        "ztAPIs": ["https://b:1280", "https://c:1281/edge/client/v1/"],
        "id": { "cert": cert, "key": keys::P256_PKCS8, "ca": ca.pem },
    })
    .to_string();
    let id = Identity::from_json(&json, None).unwrap();
    let urls: Vec<_> = id.client_api_urls().iter().map(Url::as_str).collect();
    assert_eq!(
        urls,
        [
            "https://b:1280/edge/client/v1",
            "https://c:1281/edge/client/v1"
        ]
    );
    // An empty ztAPIs (or null) falls back to ztAPI.
    let json = serde_json::json!({
        "ztAPI": "https://a:1280", "ztAPIs": [],
        "id": { "cert": cert, "key": keys::P256_PKCS8, "ca": ca.pem },
    })
    .to_string();
    let id = Identity::from_json(&json, None).unwrap();
    assert_eq!(
        id.client_api_url().as_str(),
        "https://a:1280/edge/client/v1"
    );
}

#[test]
fn save_round_trips_go_format_with_mode_0600() {
    let ca = TestCa::new("test-ca");
    let cert = ca.client_cert("id-4", keys::RSA_PKCS8);
    let id = Identity::from_pem("https://127.0.0.1:1280", &cert, keys::RSA_PKCS1, &ca.pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.json");
    // Pre-existing world-readable file must not keep its mode.
    std::fs::write(&path, "{}").unwrap();
    id.save(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ztAPI"], "https://127.0.0.1:1280/edge/client/v1");
    assert!(v["ztAPIs"].is_null());
    assert!(
        v["id"]["key"]
            .as_str()
            .unwrap()
            .starts_with("pem:-----BEGIN RSA PRIVATE KEY")
    );
    assert!(
        v["id"]["cert"]
            .as_str()
            .unwrap()
            .starts_with("pem:-----BEGIN CERTIFICATE")
    );
    assert!(
        v["id"]["ca"]
            .as_str()
            .unwrap()
            .starts_with("pem:-----BEGIN CERTIFICATE")
    );
    assert_eq!(v["enableHa"], false);
    let back = Identity::load(&path).unwrap();
    assert_eq!(back.name(), "id-4");
    assert_eq!(back.key_type(), KeyType::Rsa(2048));
    // No temp files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn rejects_bad_material_with_clear_errors() {
    let ca = TestCa::new("test-ca");
    let cert = ca.client_cert("id-5", keys::P256_PKCS8);
    // Key does not match the certificate.
    let err = Identity::from_pem("https://h:1", &cert, keys::P384_SEC1, &ca.pem).unwrap_err();
    assert!(matches!(err, IdentityError::Tls(_)), "{err}");
    // P-521 key: unsupported by ring.
    let err = Identity::from_pem("https://h:1", &cert, keys::P521_SEC1, &ca.pem).unwrap_err();
    assert!(matches!(err, IdentityError::UnsupportedKey(_)), "{err}");
    // Missing CA.
    let json = serde_json::json!({"ztAPI":"https://h:1","id":{"cert":cert,"key":keys::P256_SEC1}});
    let err = Identity::from_json(&json.to_string(), None).unwrap_err();
    assert!(matches!(err, IdentityError::MissingField("ca")));
    // No URL at all.
    let json = serde_json::json!({"id":{"cert":cert,"key":keys::P256_SEC1,"ca":ca.pem}});
    let err = Identity::from_json(&json.to_string(), None).unwrap_err();
    assert!(matches!(err, IdentityError::NoControllerUrl));
    // Plain http.
    assert!(normalize_api_url("http://h:1280").is_err());
}

#[test]
fn debug_redacts_the_key() {
    let ca = TestCa::new("test-ca");
    let cert = ca.client_cert("id-6", keys::P256_PKCS8);
    let id = Identity::from_pem("https://h:1", &cert, keys::P256_SEC1, &ca.pem).unwrap();
    let dbg = format!("{id:?}");
    assert!(dbg.contains("<redacted>"));
    assert!(!dbg.contains("PRIVATE KEY"));
    let key_body = keys::P256_SEC1.lines().nth(1).unwrap();
    assert!(!dbg.contains(key_body));
}

#[test]
fn url_normalisation() {
    for (input, api, root) in [
        (
            "https://h:1280",
            "https://h:1280/edge/client/v1",
            "https://h:1280/",
        ),
        (
            "https://h:1280/",
            "https://h:1280/edge/client/v1",
            "https://h:1280/",
        ),
        (
            "https://h:1280/edge/client/v1",
            "https://h:1280/edge/client/v1",
            "https://h:1280/",
        ),
        (
            "https://h:1280/edge/client/v1/",
            "https://h:1280/edge/client/v1",
            "https://h:1280/",
        ),
        (
            "https://h/zt/edge/client/v1",
            "https://h/zt/edge/client/v1",
            "https://h/zt",
        ),
    ] {
        let u = normalize_api_url(input).unwrap();
        assert_eq!(u.as_str(), api, "{input}");
        assert_eq!(controller_root(&u).as_str(), root, "{input}");
    }
}

#[test]
fn client_config_trusts_only_id_ca() {
    let ca = TestCa::new("test-ca");
    let cert = ca.client_cert("id-7", keys::P256_PKCS8);
    let id = Identity::from_pem("https://h:1", &cert, keys::P256_SEC1, &ca.pem).unwrap();
    let cfg = id.rustls_client_config(&[b"ziti-edge"]).unwrap();
    assert_eq!(cfg.alpn_protocols, vec![b"ziti-edge".to_vec()]);
    assert!(cfg.client_auth_cert_resolver.has_certs());
}

#[test]
fn certificate_validity_reads_the_leaf_dates() {
    let ca = TestCa::new("test-ca");
    let cert = ca.client_cert("id-dates", keys::P256_PKCS8);
    let id =
        Identity::from_pem("https://127.0.0.1:1280", &cert, keys::P256_PKCS8, &ca.pem).unwrap();
    let v = id.certificate_validity().unwrap();
    // rcgen's defaults: 1975-01-01 to 4096-01-01, both at midnight UTC.
    assert_eq!(v.not_before, 157_766_400);
    assert_eq!(v.not_after, 67_090_118_400);
    assert!(v.contains(1_800_000_000));
    assert!(!v.contains(v.not_before - 1));
    assert!(!v.contains(v.not_after + 1));
    assert!(v.contains(v.not_after));
}
