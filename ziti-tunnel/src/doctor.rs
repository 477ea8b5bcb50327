//! `zt-tunnel doctor`: the client-side troubleshooting flow, one line per step.
//!
//! The checks run in order; each prints `OK   <step>: <detail>` or `FAIL <step>: <what is wrong
//! and what to do>`. After the first failure the remaining steps print `SKIP` and the process
//! exits with 10 + the failing step's number. The shell ([`run`]) performs the checks; turning
//! their results into lines and an exit code is pure ([`Report`] and the `*_outcome` functions)
//! and unit-tested below.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use ziti_sdk::controller::{ApiErrorCode, ControllerConfig};
use ziti_sdk::identity::CertificateValidity;
use ziti_sdk::probe::{ProbeError, TlsProbe, probe_controller, probe_edge_router};
use ziti_sdk::session::EdgeRouter;
use ziti_sdk::{
    ContextOptions, Controller, DialOptions, Identity, Service, SessionType, ZitiContext,
    error_chain,
};

const EXIT_CODES: &str = "\
Each step prints `OK   <step>: <detail>`, `FAIL <step>: <what is wrong and what to do>`, or
`SKIP` for steps that cannot run after a failure. Steps, in order:
  1 identity        the file loads; the certificate's not-before/not-after dates
  2 controller      TCP to the controller URL (latency) and TLS verified against the identity's CA
  3 authentication  the identity authenticates (OIDC or legacy, as the SDK chooses)
  4 services        the services the identity can see
  5 service         (--service) visible, Dial allowed, its intercept config
  6 edge routers    TCP + TLS to each edge router offered (for the service's dial session, or
                    all of the identity's routers without --service)
  7 dial            (--service) a real test dial

Exit status: 0 when every step is OK, else 10 + the number of the first failing step:
  11 identity, 12 controller, 13 authentication, 14 services, 15 service, 16 edge routers,
  17 dial. 2 for a usage error.";

/// `zt-tunnel doctor`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct DoctorArgs {
    /// Identity file (JSON).
    #[arg(short = 'i', long = "identity")]
    identity: PathBuf,
    /// Also check this service: visible, dialable, its edge routers, and a test dial.
    #[arg(short = 's', long)]
    service: Option<String>,
    /// Seconds each network check (TCP+TLS probe, controller request) may take.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// The checks, numbered as their exit codes count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Identity = 1,
    Controller = 2,
    Authentication = 3,
    Services = 4,
    Service = 5,
    EdgeRouters = 6,
    Dial = 7,
}

impl Step {
    /// The name printed in the report.
    pub fn name(self) -> &'static str {
        match self {
            Step::Identity => "identity",
            Step::Controller => "controller",
            Step::Authentication => "authentication",
            Step::Services => "services",
            Step::Service => "service",
            Step::EdgeRouters => "edge routers",
            Step::Dial => "dial",
        }
    }

    /// 10 + the step's number.
    pub fn exit_code(self) -> u8 {
        10 + self as u8
    }

    /// The steps that run, in order: `service` and `dial` only for a named service.
    pub fn plan(with_service: bool) -> Vec<Step> {
        let mut steps = vec![
            Step::Identity,
            Step::Controller,
            Step::Authentication,
            Step::Services,
        ];
        if with_service {
            steps.push(Step::Service);
        }
        steps.push(Step::EdgeRouters);
        if with_service {
            steps.push(Step::Dial);
        }
        steps
    }
}

/// What one step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, with details.
    Ok(String),
    /// Failed: what is wrong and what to do.
    Fail(String),
    /// Not run.
    Skip(String),
}

/// The report: the planned steps and what each found so far.
#[derive(Debug)]
pub struct Report {
    plan: Vec<Step>,
    done: Vec<(Step, Outcome)>,
}

impl Report {
    /// A report for the steps in `plan`.
    pub fn new(plan: Vec<Step>) -> Self {
        Report {
            plan,
            done: Vec::new(),
        }
    }

    /// Records a step's outcome; returns its line.
    pub fn record(&mut self, step: Step, outcome: Outcome) -> String {
        let line = line(step, &outcome);
        self.done.push((step, outcome));
        line
    }

    /// The first failed step, if any.
    pub fn first_failure(&self) -> Option<Step> {
        self.done.iter().find_map(|(s, o)| match o {
            Outcome::Fail(_) => Some(*s),
            _ => None,
        })
    }

    /// Marks every planned step without an outcome as skipped; returns their lines.
    pub fn finish(&mut self) -> Vec<String> {
        let reason = match self.first_failure() {
            Some(failed) => format!("not run because `{}` failed", failed.name()),
            None => "not run".to_string(),
        };
        let pending: Vec<Step> = self
            .plan
            .iter()
            .copied()
            .filter(|s| !self.done.iter().any(|(d, _)| d == s))
            .collect();
        pending
            .into_iter()
            .map(|s| self.record(s, Outcome::Skip(reason.clone())))
            .collect()
    }

    /// 0 when nothing failed, else 10 + the number of the first failing step.
    pub fn exit_code(&self) -> u8 {
        self.first_failure().map_or(0, Step::exit_code)
    }
}

/// One report line: `OK   step: detail`, `FAIL step: detail`, `SKIP step: detail`.
pub fn line(step: Step, outcome: &Outcome) -> String {
    let (tag, detail) = match outcome {
        Outcome::Ok(d) => ("OK  ", d),
        Outcome::Fail(d) => ("FAIL", d),
        Outcome::Skip(d) => ("SKIP", d),
    };
    format!("{tag} {}: {detail}", step.name())
}

/// `2026-12-02 08:10:20 UTC` for a Unix time in seconds.
pub fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm), years from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Step 1: the certificate's dates against `now` (Unix seconds).
pub fn identity_outcome(name: &str, validity: CertificateValidity, now: i64) -> Outcome {
    let (from, until) = (
        format_utc(validity.not_before),
        format_utc(validity.not_after),
    );
    if now < validity.not_before {
        Outcome::Fail(format!(
            "certificate not yet valid: valid from {from} until {until}, it is now {}; check \
             the system clock",
            format_utc(now)
        ))
    } else if now > validity.not_after {
        Outcome::Fail(format!(
            "certificate expired on {until} (valid from {from}), it is now {}; re-enroll the \
             identity",
            format_utc(now)
        ))
    } else {
        let days = (validity.not_after - now) / 86_400;
        Outcome::Ok(format!(
            "id {name}: certificate valid from {from} until {until} ({days} days left)"
        ))
    }
}

/// A probe's cause without the address (the line names it already).
pub fn probe_cause(e: &ProbeError) -> String {
    match e {
        ProbeError::Connect { source, .. } => source.to_string(),
        ProbeError::Timeout {
            after,
            connected: false,
            ..
        } => format!("no TCP connection within {}", secs(*after)),
        ProbeError::Timeout { after, .. } => {
            format!("TLS handshake did not finish within {}", secs(*after))
        }
        ProbeError::Tls { source, .. } if e.certificate_rejected() => {
            format!("TLS verification failed: {source}")
        }
        ProbeError::Tls { source, .. } => format!("TLS handshake failed: {source}"),
        ProbeError::Io { source, .. } => {
            format!("connection broke during the TLS handshake: {source}")
        }
        other => error_chain(other).to_string(),
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Step 2, probe part: `host:port` is what the identity names.
pub fn controller_probe_outcome(
    url: &str,
    host_port: &str,
    probe: &Result<TlsProbe, ProbeError>,
) -> Outcome {
    match probe {
        Ok(p) => Outcome::Ok(format!(
            "{url} reachable ({}) in {}, TLS verified against the identity's CA in {}",
            p.address,
            ms(p.connect),
            ms(p.handshake)
        )),
        Err(e) if e.is_connect_failure() => Outcome::Fail(format!(
            "cannot connect ({host_port}): {}; check the controller is running and the \
             identity's ztAPI ({url})",
            probe_cause(e)
        )),
        Err(e) if e.certificate_rejected() => Outcome::Fail(format!(
            "{} — the identity's CA does not match the controller; re-enroll or fix the \
             identity's ca",
            probe_cause(e)
        )),
        Err(e @ ProbeError::Tls { .. }) => Outcome::Fail(format!(
            "{} ({host_port}) — the controller refused the TLS connection; it may not accept \
             the identity's certificate",
            probe_cause(e)
        )),
        Err(e) => Outcome::Fail(format!("{host_port}: {}", probe_cause(e))),
    }
}

/// One edge router as step 6 saw it.
#[derive(Debug)]
pub struct RouterCheck {
    /// Router name.
    pub name: String,
    /// Its `tls://` URL, if it has one.
    pub url: Option<String>,
    /// Whether the controller lists it online.
    pub online: Option<bool>,
    /// The probe, when there was an URL to probe.
    pub probe: Option<Result<TlsProbe, ProbeError>>,
}

impl RouterCheck {
    fn address(&self) -> String {
        self.url
            .as_deref()
            .map(|u| u.trim_start_matches("tls://").to_string())
            .unwrap_or_default()
    }

    fn failure(&self) -> Option<String> {
        let offline = self.online == Some(false);
        let name = &self.name;
        let address = self.address();
        Some(match (&self.url, &self.probe) {
            (_, Some(Ok(_))) => return None,
            (Some(_), Some(Err(e))) => {
                let note = if offline {
                    " (the controller lists it offline)"
                } else {
                    ""
                };
                format!(
                    "router {name} at {address} unreachable: {}{note}",
                    probe_cause(e)
                )
            }
            // An offline router's listeners are not known to the controller, so neither is
            // its address.
            (None, _) if offline => format!(
                "router {name} unreachable: the controller lists it offline and knows no \
                 address for it; start the router, or check that it can reach the controller"
            ),
            (None, _) => {
                format!("router {name} unreachable: it has no tls: listener the SDK can use")
            }
            (Some(_), None) => format!("router {name} at {address} was not probed"),
        })
    }
}

/// Step 6: OK if at least one router answered; FAIL names every router and why.
/// `what` says where the list came from (e.g. "the dial session for db offers").
pub fn routers_outcome(what: &str, routers: &[RouterCheck]) -> Outcome {
    if routers.is_empty() {
        return Outcome::Fail(format!(
            "{what} no edge router; an edge router policy must give this identity a router (and \
             a service edge router policy the service), and the router must be online"
        ));
    }
    let mut reachable = Vec::new();
    let mut failures = Vec::new();
    for r in routers {
        match (&r.probe, r.failure()) {
            (Some(Ok(p)), _) => reachable.push(format!(
                "{} at {} ({} TCP, {} TLS)",
                r.name,
                r.address(),
                ms(p.connect),
                ms(p.handshake)
            )),
            (_, Some(f)) => failures.push(f),
            (_, None) => {}
        }
    }
    if reachable.is_empty() {
        return Outcome::Fail(failures.join("; "));
    }
    let mut detail = format!(
        "{what} {} router(s); reachable: {}",
        routers.len(),
        reachable.join(", ")
    );
    if !failures.is_empty() {
        detail.push_str("; ");
        detail.push_str(&failures.join("; "));
    }
    Outcome::Ok(detail)
}

/// Step 6 when the controller offers no edge router for the service (`reason`): always a
/// failure; the identity's own routers (`routers`, probed) say whether they are down or only not
/// meant for the service.
pub fn no_routers_for_service_outcome(
    service: &str,
    reason: &str,
    routers: &[RouterCheck],
) -> Outcome {
    let head = format!("the controller offers no edge router for {service} ({reason})");
    if routers.is_empty() {
        return Outcome::Fail(format!(
            "{head}: no edge router policy gives this identity a router"
        ));
    }
    let failures: Vec<String> = routers.iter().filter_map(RouterCheck::failure).collect();
    if failures.is_empty() {
        let names: Vec<&str> = routers.iter().map(|r| r.name.as_str()).collect();
        return Outcome::Fail(format!(
            "{head}, although the identity's router(s) {} answer: a service edge router policy \
             must cover the service",
            names.join(", ")
        ));
    }
    Outcome::Fail(format!("{head}; {}", failures.join("; ")))
}

/// Step 5: the named service among those the identity sees.
pub fn service_outcome(name: &str, services: &[Service]) -> Outcome {
    let Some(svc) = services.iter().find(|s| s.name == name) else {
        return Outcome::Fail(format!(
            "service not found: no service policy gives this identity access to {name:?} (or no \
             service has that name); ask for a Dial policy naming the identity, or check the \
             spelling ({} service(s) visible)",
            services.len()
        ));
    };
    if !svc.permissions.dial {
        return Outcome::Fail(
            "not authorized: the identity has no Dial policy for the service (it may only bind); \
             ask for a Dial service policy naming the identity"
                .to_string(),
        );
    }
    let access = if svc.permissions.bind {
        "dial,bind"
    } else {
        "dial"
    };
    let intercept = match svc.configs.intercept() {
        Some(_) => format!("intercept {}", crate::commands::intercept_text(svc)),
        None => "no intercept config".to_string(),
    };
    let e2ee = if svc.encryption_required {
        ", end-to-end encrypted"
    } else {
        ""
    };
    Outcome::Ok(format!("{name}: {access}{e2ee}; {intercept}"))
}

/// Step 4: how many services, and their names (the first few).
pub fn services_outcome(services: &[Service]) -> Outcome {
    const SHOWN: usize = 8;
    let mut names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    let mut list = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(", ... ({} more)", names.len() - SHOWN));
    }
    match services.len() {
        0 => Outcome::Ok(
            "0 services visible (no service policy names this identity yet)".to_string(),
        ),
        n => Outcome::Ok(format!("{n} visible: {list}")),
    }
}

/// Runs the checks, printing each line as it is known; returns the exit code.
pub async fn run(args: DoctorArgs) -> u8 {
    let mut report = Report::new(Step::plan(args.service.is_some()));
    let mut emit = |report: &mut Report, step: Step, outcome: Outcome| {
        println!("{}", report.record(step, outcome));
    };
    checks(&args, &mut report, &mut emit).await;
    for l in report.finish() {
        println!("{l}");
    }
    report.exit_code()
}

/// The checks in order; returns at the first failure.
async fn checks(
    args: &DoctorArgs,
    report: &mut Report,
    emit: &mut impl FnMut(&mut Report, Step, Outcome),
) {
    let timeout = Duration::from_secs(args.timeout.max(1));

    // 1. identity
    let identity = match Identity::load(&args.identity) {
        Ok(id) => id,
        Err(e) => {
            let detail = format!(
                "cannot load {}: {}; check the path and that the file is an enrolled identity",
                args.identity.display(),
                error_chain(&e)
            );
            return emit(report, Step::Identity, Outcome::Fail(detail));
        }
    };
    let outcome = match identity.certificate_validity() {
        Ok(v) => identity_outcome(identity.name(), v, unix_now()),
        Err(e) => Outcome::Fail(format!(
            "the certificate cannot be read: {}",
            error_chain(&e)
        )),
    };
    let failed = matches!(outcome, Outcome::Fail(_));
    emit(report, Step::Identity, outcome);
    if failed {
        return;
    }

    // 2. controller: TCP + TLS, then GET /version through the SDK.
    let url = identity.client_api_url().clone();
    let host_port = match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => url.to_string(),
    };
    let probe = probe_controller(&identity, &url, timeout).await;
    let outcome = controller_probe_outcome(url.as_str(), &host_port, &probe);
    let Outcome::Ok(probe_detail) = outcome else {
        return emit(report, Step::Controller, outcome);
    };
    let config = ControllerConfig {
        request_timeout: timeout,
        ..ControllerConfig::default()
    };
    let controller = match Controller::connect(&identity, config).await {
        Ok(c) => c,
        Err(e) => {
            let detail = format!(
                "{host_port} accepts TLS but does not answer as an OpenZiti controller: {}",
                error_chain(&e)
            );
            return emit(report, Step::Controller, Outcome::Fail(detail));
        }
    };
    let version = &controller.version().version;
    emit(
        report,
        Step::Controller,
        Outcome::Ok(format!("{probe_detail}; OpenZiti {version}")),
    );

    // 3. authentication
    let ctx = match ZitiContext::from_controller(&identity, controller, ContextOptions::default())
        .await
    {
        Ok(ctx) => ctx,
        Err(e) => {
            let detail = format!(
                "{}; the controller does not accept this identity (deleted, or re-enrolled with \
                 a new certificate?)",
                error_chain(&e)
            );
            return emit(report, Step::Authentication, Outcome::Fail(detail));
        }
    };
    let kind = if ctx.uses_oidc() { "OIDC" } else { "legacy" };
    // The name an administrator gave it, when the controller says (the certificate has the id).
    let who = match ctx.controller().current_identity().await {
        Ok(me) => format!("{} (id {})", me.name, me.id),
        Err(_) => format!("id {}", identity.name()),
    };
    emit(
        report,
        Step::Authentication,
        Outcome::Ok(format!("authenticated as {who} ({kind})")),
    );

    // 4. services
    let services = match ctx.controller().services().await {
        Ok(s) => s,
        Err(e) => {
            let detail = format!("listing services failed: {}", error_chain(&e));
            return emit(report, Step::Services, Outcome::Fail(detail));
        }
    };
    emit(report, Step::Services, services_outcome(&services));

    // 5. service
    let service = match &args.service {
        Some(name) => {
            let outcome = service_outcome(name, &services);
            let ok = matches!(outcome, Outcome::Ok(_));
            emit(report, Step::Service, outcome);
            if !ok {
                return;
            }
            services.iter().find(|s| &s.name == name)
        }
        None => None,
    };

    // 6. edge routers
    let timeout_routers = |routers: Vec<EdgeRouter>| probe_routers(&identity, routers, timeout);
    let outcome = match service {
        Some(svc) => {
            let what = format!("the dial session for {} offers", svc.name);
            match ctx
                .controller()
                .create_session(&svc.id, SessionType::Dial)
                .await
            {
                Ok(session) if !session.edge_routers.is_empty() => {
                    routers_outcome(&what, &timeout_routers(session.edge_routers).await)
                }
                Ok(_) => {
                    let reason = "its dial session lists none";
                    no_service_routers(&ctx, svc, reason, timeout_routers).await
                }
                Err(e)
                    if e.api_error()
                        .is_some_and(|a| a.code == ApiErrorCode::NoEdgeRoutersAvailable) =>
                {
                    let reason = "NO_EDGE_ROUTERS_AVAILABLE";
                    no_service_routers(&ctx, svc, reason, timeout_routers).await
                }
                Err(e) => Outcome::Fail(format!(
                    "cannot create a dial session for {}: {}",
                    svc.name,
                    error_chain(&e)
                )),
            }
        }
        None => match ctx.controller().current_identity_edge_routers().await {
            Ok(all) => routers_outcome("the controller lists", &timeout_routers(all).await),
            Err(e) => Outcome::Fail(format!(
                "listing the identity's edge routers failed: {}",
                error_chain(&e)
            )),
        },
    };
    let failed = matches!(outcome, Outcome::Fail(_));
    emit(report, Step::EdgeRouters, outcome);
    if failed {
        return;
    }

    // 7. dial
    if let Some(svc) = service {
        let start = Instant::now();
        let outcome = match ctx.dial_with(&svc.name, &DialOptions::default()).await {
            Ok(stream) => Outcome::Ok(format!(
                "connected through router {} in {}",
                stream.router(),
                ms(start.elapsed())
            )),
            Err(e) => Outcome::Fail(error_chain(&e).to_string()),
        };
        emit(report, Step::Dial, outcome);
    }
}

/// Step 6 when the controller offers no router for the service: probes the identity's routers
/// to say why.
async fn no_service_routers<F, Fut>(
    ctx: &ZitiContext,
    svc: &Service,
    reason: &str,
    probe: F,
) -> Outcome
where
    F: FnOnce(Vec<EdgeRouter>) -> Fut,
    Fut: std::future::Future<Output = Vec<RouterCheck>>,
{
    match ctx.controller().current_identity_edge_routers().await {
        Ok(all) => no_routers_for_service_outcome(&svc.name, reason, &probe(all).await),
        Err(e) => Outcome::Fail(format!(
            "the controller offers no edge router for {} ({reason}), and listing the \
             identity's routers failed: {}",
            svc.name,
            error_chain(&e)
        )),
    }
}

/// Probes every router with a `tls:` URL at once.
async fn probe_routers(
    identity: &Identity,
    routers: Vec<EdgeRouter>,
    timeout: Duration,
) -> Vec<RouterCheck> {
    let probes = routers.into_iter().map(|r| async move {
        let url = r.tls_url().map(str::to_string);
        let probe = match &url {
            Some(u) => Some(probe_edge_router(identity, u, timeout).await),
            None => None,
        };
        RouterCheck {
            name: r.name.clone(),
            url,
            online: r.is_online,
            probe,
        }
    });
    futures::future::join_all(probes).await
}

fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, dial: bool, bind: bool) -> Service {
        let mut permissions = Vec::new();
        if dial {
            permissions.push("Dial");
        }
        if bind {
            permissions.push("Bind");
        }
        let v = serde_json::json!({
            "id": format!("id-{name}"), "name": name, "encryptionRequired": false,
            "permissions": permissions,
        });
        Service::from_json(&v).unwrap()
    }

    #[test]
    fn exit_code_names_the_first_failure_and_the_rest_are_skipped() {
        let mut r = Report::new(Step::plan(true));
        assert_eq!(
            r.record(Step::Identity, Outcome::Ok("alice".into())),
            "OK   identity: alice"
        );
        assert_eq!(
            r.record(Step::Controller, Outcome::Fail("cannot connect".into())),
            "FAIL controller: cannot connect"
        );
        let skipped = r.finish();
        assert_eq!(
            skipped,
            [
                "SKIP authentication: not run because `controller` failed",
                "SKIP services: not run because `controller` failed",
                "SKIP service: not run because `controller` failed",
                "SKIP edge routers: not run because `controller` failed",
                "SKIP dial: not run because `controller` failed",
            ]
        );
        assert_eq!(r.exit_code(), 12);
    }

    #[test]
    fn every_step_has_its_exit_code() {
        let codes: Vec<u8> = Step::plan(true).into_iter().map(Step::exit_code).collect();
        assert_eq!(codes, [11, 12, 13, 14, 15, 16, 17]);
        let names: Vec<&str> = Step::plan(false).into_iter().map(Step::name).collect();
        assert_eq!(
            names,
            [
                "identity",
                "controller",
                "authentication",
                "services",
                "edge routers"
            ]
        );
        let mut ok = Report::new(Step::plan(false));
        for s in Step::plan(false) {
            ok.record(s, Outcome::Ok(String::new()));
        }
        assert!(ok.finish().is_empty());
        assert_eq!(ok.exit_code(), 0);
        let mut late = Report::new(Step::plan(true));
        late.record(Step::Dial, Outcome::Fail("no terminators".into()));
        assert_eq!(late.exit_code(), 17);
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_796_199_020), "2026-12-02 08:10:20 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn certificate_dates() {
        let v = CertificateValidity {
            not_before: 1_000_000_000,
            not_after: 1_100_000_000,
        };
        let ok = identity_outcome("alice", v, 1_050_000_000);
        assert!(
            matches!(&ok, Outcome::Ok(d) if d.starts_with("id alice: certificate valid from 2001-09-09 01:46:40 UTC until 2004-11-09 11:33:20 UTC (")),
            "{ok:?}"
        );
        let expired = identity_outcome("alice", v, 1_100_000_001);
        assert!(
            matches!(&expired, Outcome::Fail(d) if d.starts_with("certificate expired on 2004-11-09 11:33:20 UTC") && d.contains("re-enroll")),
            "{expired:?}"
        );
        let early = identity_outcome("alice", v, 999_999_999);
        assert!(
            matches!(&early, Outcome::Fail(d) if d.starts_with("certificate not yet valid: valid from 2001-09-09 01:46:40 UTC")),
            "{early:?}"
        );
    }

    #[test]
    fn controller_failures_tell_connect_from_tls() {
        let refused = Err(ProbeError::Connect {
            host: "127.0.0.1".into(),
            port: 9,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        let o = controller_probe_outcome("https://127.0.0.1:9/", "127.0.0.1:9", &refused);
        assert!(
            matches!(&o, Outcome::Fail(d) if d.starts_with("cannot connect (127.0.0.1:9): connection refused")),
            "{o:?}"
        );
        let foreign = Err(ProbeError::Tls {
            host: "127.0.0.1".into(),
            port: 9,
            source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        });
        let o = controller_probe_outcome("https://127.0.0.1:9/", "127.0.0.1:9", &foreign);
        assert!(
            matches!(&o, Outcome::Fail(d) if d.starts_with("TLS verification failed: invalid peer certificate: UnknownIssuer — the identity's CA does not match the controller; re-enroll or fix the identity's ca")),
            "{o:?}"
        );
        let ok = Ok(TlsProbe {
            address: "127.0.0.1:9".parse().unwrap(),
            connect: Duration::from_millis(3),
            handshake: Duration::from_millis(12),
        });
        let o = controller_probe_outcome("https://127.0.0.1:9/", "127.0.0.1:9", &ok);
        assert_eq!(
            o,
            Outcome::Ok(
                "https://127.0.0.1:9/ reachable (127.0.0.1:9) in 3.0 ms, TLS verified against the identity's CA in 12.0 ms".into()
            )
        );
    }

    #[test]
    fn routers_fail_only_when_none_answers() {
        let down = |name: &str| RouterCheck {
            name: name.into(),
            url: Some(format!("tls://127.0.0.1:{}", name.len())),
            online: Some(false),
            probe: Some(Err(ProbeError::Connect {
                host: "127.0.0.1".into(),
                port: 3,
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            })),
        };
        let up = RouterCheck {
            name: "er2".into(),
            url: Some("tls://127.0.0.1:3022".into()),
            online: Some(true),
            probe: Some(Ok(TlsProbe {
                address: "127.0.0.1:3022".parse().unwrap(),
                connect: Duration::from_millis(1),
                handshake: Duration::from_millis(4),
            })),
        };
        let none = routers_outcome("the session offers", &[down("er1")]);
        assert_eq!(
            none,
            Outcome::Fail(
                "router er1 at 127.0.0.1:3 unreachable: connection refused (the controller lists it offline)".into()
            )
        );
        let some = routers_outcome("the session offers", &[down("er1"), up]);
        assert!(
            matches!(&some, Outcome::Ok(d) if d.starts_with("the session offers 2 router(s); reachable: er2 at 127.0.0.1:3022 (1.0 ms TCP, 4.0 ms TLS); router er1")),
            "{some:?}"
        );
        let o = no_routers_for_service_outcome("db", "NO_EDGE_ROUTERS_AVAILABLE", &[down("er1")]);
        assert_eq!(
            o,
            Outcome::Fail(
                "the controller offers no edge router for db (NO_EDGE_ROUTERS_AVAILABLE); router er1 at 127.0.0.1:3 unreachable: connection refused (the controller lists it offline)".into()
            )
        );
        let o = no_routers_for_service_outcome("db", "NO_EDGE_ROUTERS_AVAILABLE", &[]);
        assert!(
            matches!(&o, Outcome::Fail(d) if d.ends_with("no edge router policy gives this identity a router")),
            "{o:?}"
        );
        let offline = RouterCheck {
            name: "er3".into(),
            url: None,
            online: Some(false),
            probe: None,
        };
        let o = routers_outcome("the session offers", &[offline]);
        assert!(
            matches!(&o, Outcome::Fail(d) if d.starts_with("router er3 unreachable: the controller lists it offline and knows no address for it")),
            "{o:?}"
        );
        let empty = routers_outcome("the session offers", &[]);
        assert!(
            matches!(&empty, Outcome::Fail(d) if d.starts_with("the session offers no edge router")),
            "{empty:?}"
        );
    }

    #[test]
    fn service_visibility_and_dial_permission() {
        let list = [svc("web", true, false), svc("db", false, true)];
        let o = service_outcome("web", &list);
        assert_eq!(o, Outcome::Ok("web: dial; no intercept config".into()));
        let o = service_outcome("db", &list);
        assert!(
            matches!(&o, Outcome::Fail(d) if d.starts_with("not authorized: the identity has no Dial policy for the service")),
            "{o:?}"
        );
        let o = service_outcome("nope", &list);
        assert!(
            matches!(&o, Outcome::Fail(d) if d.starts_with("service not found: no service policy gives this identity access")),
            "{o:?}"
        );
        assert_eq!(
            services_outcome(&list),
            Outcome::Ok("2 visible: db, web".into())
        );
    }
}
