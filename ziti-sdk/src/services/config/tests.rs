use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

#[test]
fn intercept_v1_from_reference_example() {
    // edge-client-api.md §7.2
    let v: InterceptV1 = serde_json::from_str(
        r#"{"protocols":["tcp"],"addresses":["echo.ziti","*.echo.ziti","100.64.10.0/24"],"portRanges":[{"low":7,"high":7}]}"#,
    )
    .unwrap();
    assert_eq!(v.protocols, [Protocol::Tcp]);
    assert_eq!(
        v.addresses,
        [
            InterceptAddress::Hostname("echo.ziti".into()),
            InterceptAddress::Wildcard("echo.ziti".into()),
            InterceptAddress::Cidr(IpAddr::V4(Ipv4Addr::new(100, 64, 10, 0)), 24),
        ]
    );
    assert!(v.port_ranges[0].contains(7) && !v.port_ranges[0].contains(8));
    assert_eq!(v.connect_timeout(), Duration::from_secs(5));
}

#[test]
fn intercept_v1_all_fields() {
    let v: InterceptV1 = serde_json::from_str(
        r#"{"protocols":["tcp","udp"],"addresses":["10.0.0.1","fd00::/64","1.2.3.4/56","*.Example.COM"],
        "portRanges":[{"low":80,"high":443}],"dialOptions":{"identity":"$dst_ip","connectTimeoutSeconds":9},
        "sourceIp":"$src_ip:$src_port","allowedSourceAddresses":["192.168.0.0/16"]}"#,
    )
    .unwrap();
    assert_eq!(
        v.addresses[0],
        InterceptAddress::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
    );
    assert_eq!(
        v.addresses[1],
        InterceptAddress::Cidr(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)), 64)
    );
    // An invalid CIDR is a literal DNS name.
    assert_eq!(
        v.addresses[2],
        InterceptAddress::Hostname("1.2.3.4/56".into())
    );
    assert_eq!(
        v.addresses[3],
        InterceptAddress::Wildcard("example.com".into())
    );
    assert_eq!(
        v.dial_options.as_ref().unwrap().identity.as_deref(),
        Some("$dst_ip")
    );
    assert_eq!(v.connect_timeout(), Duration::from_secs(9));
    assert_eq!(v.source_ip.as_deref(), Some("$src_ip:$src_port"));
    assert_eq!(v.allowed_source_addresses, ["192.168.0.0/16"]);
    let no_timeout: InterceptV1 = serde_json::from_str(
        r#"{"protocols":["udp"],"addresses":["a"],"portRanges":[{"low":1,"high":2}],"dialOptions":{}}"#,
    )
    .unwrap();
    assert_eq!(no_timeout.connect_timeout(), Duration::from_secs(15));
}

#[test]
fn wildcard_matching() {
    let w = InterceptAddress::parse("*.echo.ziti");
    assert!(w.matches_hostname("a.echo.ziti"));
    assert!(w.matches_hostname("A.B.Echo.Ziti."));
    assert!(w.matches_hostname("echo.ziti"));
    assert!(!w.matches_hostname("badecho.ziti"));
    assert!(!w.matches_hostname("ziti"));
    let h = InterceptAddress::parse("Echo.Ziti");
    assert!(h.matches_hostname("echo.ziti"));
    assert!(!h.matches_hostname("a.echo.ziti"));
}

#[test]
fn tunneler_client_converts_to_intercept() {
    let c: ZitiTunnelerClientV1 =
        serde_json::from_str(r#"{"hostname":"db.ziti","port":5432}"#).unwrap();
    let i = c.to_intercept();
    assert_eq!(i.protocols, [Protocol::Tcp, Protocol::Udp]);
    assert_eq!(i.addresses, [InterceptAddress::Hostname("db.ziti".into())]);
    assert_eq!(
        i.port_ranges,
        [PortRange {
            low: 5432,
            high: 5432
        }]
    );
}

#[test]
fn host_v1_reference_example() {
    let h: HostV1 = serde_json::from_str(
        r#"{"protocol":"tcp","address":"127.0.0.1","port":7007,"listenOptions":{"precedence":"default","cost":0}}"#,
    )
    .unwrap();
    assert_eq!(h.protocol, Some(Protocol::Tcp));
    assert_eq!(h.address.as_deref(), Some("127.0.0.1"));
    assert_eq!(h.port, Some(7007));
    let lo = h.listen_options_or_default();
    assert_eq!(lo.precedence, Precedence::Default);
    assert_eq!(lo.max_connections, 3);
    assert_eq!(lo.effective_connect_timeout(), Duration::from_secs(5));
}

#[test]
fn host_v1_forwarding_and_everything_else() {
    let h: HostV1 = serde_json::from_str(
        r#"{"forwardProtocol":true,"allowedProtocols":["tcp","udp"],
        "forwardAddress":true,"allowedAddresses":["10.0.0.0/8","*.corp"],
        "forwardPort":true,"allowedPortRanges":[{"low":1,"high":1024}],
        "forwardAddressTranslations":[{"from":"100.64.0.0","to":"10.0.0.0","prefixLength":16}],
        "allowedSourceAddresses":["172.16.0.0/12"],
        "proxy":{"type":"http","address":"proxy:3128"},
        "listenOptions":{"bindUsingEdgeIdentity":true,"identity":"$tunneler_id.name","cost":7,
            "precedence":"required","maxConnections":5,"connectTimeout":"250ms","connectTimeoutSeconds":30},
        "portChecks":[{"address":"localhost:22","interval":"5s","timeout":"1s",
            "actions":[{"trigger":"fail","consecutiveEvents":3,"action":"mark unhealthy"}]}],
        "httpChecks":[{"url":"http://localhost/health","method":"GET","expectStatus":200,
            "expectInBody":"ok","interval":"1m","timeout":"2s",
            "actions":[{"trigger":"change","duration":"1h","action":"increase cost 10"}]}]}"#,
    )
    .unwrap();
    assert!(h.forward_protocol && h.forward_address && h.forward_port);
    assert_eq!(h.allowed_protocols, [Protocol::Tcp, Protocol::Udp]);
    assert_eq!(
        h.allowed_addresses[1],
        InterceptAddress::Wildcard("corp".into())
    );
    assert_eq!(h.allowed_port_ranges, [PortRange { low: 1, high: 1024 }]);
    assert_eq!(h.forward_address_translations[0].prefix_length, 16);
    assert_eq!(h.proxy.as_ref().unwrap().kind, "http");
    let lo = h.listen_options.as_ref().unwrap();
    assert!(lo.bind_using_edge_identity);
    assert_eq!(lo.precedence, Precedence::Required);
    assert_eq!(lo.cost, 7);
    assert_eq!(lo.max_connections, 5);
    // connectTimeout wins over the deprecated seconds field.
    assert_eq!(lo.effective_connect_timeout(), Duration::from_millis(250));
    assert_eq!(h.port_checks[0].interval, Duration::from_secs(5));
    assert_eq!(h.port_checks[0].actions[0].consecutive_events, Some(3));
    assert_eq!(h.http_checks[0].interval, Duration::from_secs(60));
    assert_eq!(
        h.http_checks[0].actions[0].duration,
        Some(Duration::from_secs(3600))
    );
    let failed: ListenOptions = serde_json::from_str(r#"{"precedence":"failed"}"#).unwrap();
    assert_eq!(failed.precedence, Precedence::Failed);
    assert!(serde_json::from_str::<ListenOptions>(r#"{"precedence":"bogus"}"#).is_err());
}

#[test]
fn host_v2_terminators() {
    let h: HostV2 = serde_json::from_str(
        r#"{"terminators":[{"protocol":"tcp","address":"a","port":1},
            {"protocol":"udp","address":"b","port":2,"listenOptions":{"precedence":"failed"}}]}"#,
    )
    .unwrap();
    assert_eq!(h.terminators.len(), 2);
    assert_eq!(h.terminators[1].protocol, Some(Protocol::Udp));
    assert_eq!(
        h.terminators[1].listen_options_or_default().precedence,
        Precedence::Failed
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
    assert_eq!(parse_duration("10ms"), Some(Duration::from_millis(10)));
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("5x"), None);
    assert_eq!(parse_duration("99999999999999999999h"), None);
}

proptest::proptest! {
    #[test]
    fn address_parse_never_panics(s in "\\PC{0,40}") {
        let _ = InterceptAddress::parse(&s);
        let _ = parse_duration(&s);
    }
}
