//! Compiler tests: a valid file compiles to what it says; every mistake is reported,
//! all at once, with its line, its rule and a fix.

use std::path::Path;

use super::compile_text;
use crate::policy::{Permission, Value};
use crate::rules::matcher::Found;
use crate::rules::{IfAbsent, Target};

const VALID: &str = r#"
permissions = ["export"]

[paths]
unmatched_status = 403

[kind.asset]
query = "SELECT account_id, consultancy_account_id FROM asset WHERE id = $1"
columns = ["account_id", "consultancy_account_id"]
not_found_message = "No asset found with ID {id}."

[kind.asset.acl]
read = ["account:{account_id}", ["account:{consultancy_account_id}", "role:consultant"]]
export = "role:exporter"

[[kind.asset.case]]
column = "account_id"
is_null = true
acl = { read = "every-logged-in-user" }

[kind.platform.acl]
create-children = ["role:admin", ["role:consultant", "account-role:Consultancy"]]

[[route]]
name = "health"
methods = ["GET"]
path = "/health"
auth = "public"

[[route]]
name = "asset-read"
methods = ["GET"]
path = "/assets/{id}"

  [[route.check]]
  permission = "read"
  kind = "asset"
  path = "id"

[[route]]
name = "asset-create"
methods = ["POST"]
path = "/assets"

  [[route.check]]
  permission = "create-children"
  first_of = [{ kind = "asset", json = "/parent_asset_id" }, { kind = "asset", query = ["parent", "parent_id"] }]
  if_absent = "admins-only"

[[route]]
name = "accounts-create"
methods = ["POST"]
path = "/accounts"
roles_accepted = ["admin", "consultant"]

  [[route.check]]
  permission = "create-children"
  kind = "platform"
"#;

#[test]
fn a_valid_file_compiles_to_what_it_says() {
    let config = compile_text(VALID, Path::new("rules.toml")).unwrap_or_else(|d| panic!("{d}"));
    assert!(config.warnings.errors.is_empty());
    let rules = &config.rules;
    assert_eq!(
        rules.permissions,
        ["create-children", "read", "update", "delete", "export"]
    );
    assert_eq!(rules.unmatched_status, 403);
    let asset = rules.kinds.iter().find(|k| k.name == "asset").unwrap();
    assert_eq!(asset.label, "Asset");
    assert_eq!(asset.not_found_message, "No asset found with ID {id}.");
    assert_eq!(asset.policy.cases.len(), 1);
    let (acl, case) = asset
        .policy
        .acl_for(Permission::READ, &[Value::Null, Value::Null]);
    assert_eq!(case, Some(0));
    assert_eq!(acl.unwrap().items[0].source, "every-logged-in-user");
    assert!(
        asset
            .policy
            .acl_for(Permission(4), &[Value::Int(1), Value::Null])
            .0
            .is_some()
    );
    let platform = rules.kinds.iter().find(|k| k.name == "platform").unwrap();
    assert!(platform.is_singleton());

    let create = rules
        .routes
        .iter()
        .find(|r| &*r.name == "asset-create")
        .unwrap();
    assert!(create.needs_body);
    assert_eq!(create.checks[0].if_absent, IfAbsent::AdminsOnly);
    assert!(matches!(&create.checks[0].target, Target::Sources(s) if s.len() == 2));
    let health = rules.routes.iter().find(|r| &*r.name == "health").unwrap();
    assert!(health.public);
    assert_eq!(health.line, 25);
}

fn errors_of(text: &str) -> String {
    match compile_text(text, Path::new("rules.toml")) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.to_string(),
    }
}

#[test]
fn every_mistake_is_reported_with_line_rule_and_fix() {
    let text = r#"
[kind.asset]
query = "SELECT account_id FROM asset WHERE id = 1"
columns = ["account_id"]
acl = { reed = ["account:{owner}"] }

[[route]]
name = "a"
methods = ["GET"]
path = "/assets/{id}"
roles_required = [""]

  [[route.check]]
  permission = "read"
  kind = "aset"
  path = "id"

[[route]]
name = "a"
methods = ["get"]
path = "/x//y"

[[route]]
name = "b"
methods = ["GET"]
path = "/things/{id}"

  [[route.check]]
  permission = "read"
  kind = "asset"
  path = "thing_id"
"#;
    let report = errors_of(text);
    let expected = [
        "rules.toml:2: error: kind \"asset\": query must use $1",
        "rules.toml:2: error: kind \"asset\": unknown permission \"reed\"; did you mean \"read\"?",
        "rules.toml:8: error: route \"a\": role name must not be empty",
        "rules.toml:8: error: route \"a\", check 1: unknown kind \"aset\"; did you mean \"asset\"?",
        "rules.toml:19: error: route \"a\": duplicate name; line 8 already uses it",
        "rules.toml:19: error: route \"a\": method \"get\" must be an upper-case HTTP method",
        "rules.toml:19: error: route \"a\": path \"/x//y\" has an empty segment",
        "rules.toml:24: error: route \"b\", check 1: path parameter \"thing_id\" is not in the template",
    ];
    for line in expected {
        assert!(report.contains(line), "missing {line:?} in:\n{report}");
    }
}

#[test]
fn unresolvable_placeholders_name_the_column() {
    let report = errors_of(
        r#"
[kind.asset]
query = "SELECT account_id FROM asset WHERE id = $1"
columns = ["account_id"]
acl = { read = ["account:{owner_id}"] }
"#,
    );
    assert!(
        report.contains("uses {owner_id}, which the kind's query does not return"),
        "{report}"
    );
}

#[test]
fn overlapping_routes_are_refused() {
    let report = errors_of(
        r#"
[[route]]
name = "one"
methods = ["GET", "POST"]
path = "/a/{x}"
auth = "public"

[[route]]
name = "two"
methods = ["POST"]
path = "/a/{y}"
auth = "public"
"#,
    );
    assert!(
        report.contains(
            "rules.toml:9: error: route \"two\": can never match: route \"one\" (line 3)"
        ),
        "{report}"
    );
}

#[test]
fn trailing_slash_routes_take_both_spellings_and_their_overlaps_are_refused() {
    let config = compile_text(
        r#"
[[route]]
name = "chart"
methods = ["GET"]
path = "/a/{x}/chart"
trailing_slash = true
auth = "public"
"#,
        Path::new("rules.toml"),
    )
    .unwrap();
    let rules = &config.rules;
    let find = |path| rules.matcher.find(&http::Method::GET, path);
    for path in ["/a/1/chart", "/a/1/chart/"] {
        assert!(matches!(find(path), Found::Route(0, _)), "{path}");
    }
    assert_eq!(find("/a/1/chart//"), Found::NoRoute);
    // An explicit slashed route after it can never match; before it, the option can't.
    let report = errors_of(
        r#"
[[route]]
name = "one"
methods = ["GET"]
path = "/a/{x}/chart"
trailing_slash = true
auth = "public"

[[route]]
name = "two"
methods = ["GET"]
path = "/a/{y}/chart/"
auth = "public"
"#,
    );
    assert!(
        report.contains("rules.toml:10: error: route \"two\": can never match: route \"one\" (line 3) has the same path shape (/a/{x}/chart, with trailing_slash)"),
        "{report}"
    );
    let report = errors_of(
        r#"
[[route]]
name = "one"
methods = ["GET"]
path = "/a/{y}/chart/"
auth = "public"

[[route]]
name = "two"
methods = ["GET", "POST"]
path = "/a/{x}/chart"
trailing_slash = true
auth = "public"
"#,
    );
    assert!(
        report.contains("rules.toml:9: error: route \"two\": its trailing_slash can never match: route \"one\" (line 3)")
            && report.contains("remove trailing_slash or split the methods"),
        "{report}"
    );
    for path in ["/a/", "/a/{*rest}", "/"] {
        let report = errors_of(&format!(
            "[[route]]\nname = \"r\"\nmethods = [\"GET\"]\npath = \"{path}\"\ntrailing_slash = true\nauth = \"public\"\n"
        ));
        assert!(
            report.contains("ends in '/' or a catch-all already; remove trailing_slash"),
            "{path}: {report}"
        );
    }
}

#[test]
fn syntax_errors_point_at_the_line() {
    let report = errors_of("[[route]]\nname = \"x\"\nmethods = [\"GET\"\npath = \"/\"\n");
    assert!(report.starts_with("rules.toml:"), "{report}");
    let report = errors_of(
        "[[route]]\nname = \"x\"\nmethods = [\"GET\"]\npath = \"/\"\nauht = \"public\"\n",
    );
    assert!(
        report.contains("rules.toml:5:") && report.contains("unknown field `auht`"),
        "{report}"
    );
}

#[test]
fn structural_mistakes_in_checks() {
    let base = r#"
[kind.asset]
query = "SELECT account_id FROM asset WHERE id = $1"
columns = ["account_id", "parent_id"]
acl = { read = "account:{account_id}" }

[kind.platform]
acl = { create-children = "role:admin" }
"#;
    let cases = [
        ("kind = \"asset\"", "needs an id"),
        ("kind = \"platform\"\npath = \"id\"", "takes no id source"),
        (
            "kind = \"asset\"\npath = \"id\"\nquery = \"x\"",
            "give one id source",
        ),
        (
            "kind = \"asset\"\ncolumn = \"parent_id\"",
            "the first check must name one resource",
        ),
        ("kind = \"asset\"\njson = \"parent\"", "must start with '/'"),
        (
            "kind = \"asset\"\npath = \"id\"\nif_absent = \"ignore\"",
            "use \"reject\", \"skip\" or \"admins-only\"",
        ),
        (
            "kind = \"asset\"\njson = \"/ids\"\nif_empty = \"none\"",
            "if_empty = \"none\": use \"reject\", \"skip\" or \"admins-only\"",
        ),
        (
            "kind = \"asset\"\npath = \"id\"\nif_empty = \"admins-only\"",
            "if_empty applies to a json source",
        ),
        (
            "first_of = [{ kind = \"asset\", path = \"id\" }]\nkind = \"asset\"",
            "inside each alternative",
        ),
        (
            "kind = \"asset\"\npath = \"id\"\nnot_found_status = 500",
            "use 404 or 422",
        ),
        (
            "kind = \"asset\"\npath = \"id\"\nid_in_object = \"sensor\"",
            "use it with json",
        ),
        (
            "kind = \"asset\"\njson = \"/ids\"\nid_in_object = \"\"",
            "must name a key",
        ),
        ("kind = \"asset\"\nform = \"\"", "must name a field"),
        (
            "kind = \"asset\"\nform = \"parent\"\njson = \"/parent\"",
            "give one id source",
        ),
    ];
    for (check, needle) in cases {
        let text = format!(
            "{base}\n[[route]]\nname = \"r\"\nmethods = [\"GET\"]\npath = \"/assets/{{id}}\"\n[[route.check]]\npermission = \"read\"\n{check}\n"
        );
        let report = errors_of(&text);
        assert!(report.contains(needle), "{check}: {report}");
    }
}

#[test]
fn suspicious_but_valid_things_are_warnings() {
    let config = compile_text(
        r#"
[kind.doc]
query = "SELECT owner FROM doc WHERE id = $1"
columns = ["owner"]
acl = { read = [["every-logged-in-user", "account:{owner}"], []] }

[[route]]
name = "r"
methods = ["GET"]
path = "/docs/{id}"
roles_required = ["admn"]
"#,
        Path::new("rules.toml"),
    )
    .unwrap();
    let warnings = config.warnings.to_string();
    assert!(
        warnings.contains("matches every logged-in user"),
        "{warnings}"
    );
    assert!(
        warnings.contains("an empty group never matches"),
        "{warnings}"
    );
    assert!(
        warnings.contains("role \"admn\" is not a built-in role; did you mean \"admin\"?"),
        "{warnings}"
    );
}

#[test]
fn server_settings_are_checked() {
    let report = errors_of(
        r#"
[server]
https = "0.0.0.0:99999"
http = "0.0.0.0:8080"
upstream = "ftp://x/y"
tls_cert = "c.pem"

[server.limits]
max_header_bytes = 10
"#,
    );
    for needle in [
        "https = \"0.0.0.0:99999\" is not an address",
        "set both tls_cert and tls_key",
        "upstream = \"ftp://x/y\"",
        "max_header_bytes = 10 is outside",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
}

#[test]
fn a_body_budget_too_small_for_one_body_is_an_error() {
    let report = errors_of(
        "[server.limits]\nmax_json_body_bytes = 65536\nmax_buffered_body_bytes = 16384\n",
    );
    assert!(
        report.contains("max_buffered_body_bytes = 16384 is below max_json_body_bytes = 65536"),
        "{report}"
    );
    assert!(
        report.contains("logins get an eighth of it") && report.contains("at least 32768"),
        "{report}"
    );
    let report = errors_of("[server.limits]\nbody_read_timeout_ms = 5\n");
    assert!(
        report.contains("body_read_timeout_ms = 5 is outside"),
        "{report}"
    );
}

#[test]
fn a_decision_listener_off_loopback_is_warned_unless_it_requires_a_certificate() {
    let open = compile_text(
        "[server]\ndecision = \"0.0.0.0:9191\"\nupstream = \"http://127.0.0.1:5000\"\n",
        Path::new("rules.toml"),
    )
    .unwrap();
    assert!(
        open.warnings
            .to_string()
            .contains("is not a loopback address"),
        "{}",
        open.warnings
    );
    let mutual = compile_text(
        "[server]\ndecision = \"0.0.0.0:9191\"\ndecision_client_ca = \"ingress-ca.pem\"\n\
         tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nupstream = \"http://127.0.0.1:5000\"\n",
        Path::new("/etc/flexgate/rules.toml"),
    )
    .unwrap();
    assert!(
        !mutual.warnings.to_string().contains("loopback"),
        "{}",
        mutual.warnings
    );
    assert_eq!(
        mutual.server.decision_client_ca.as_deref(),
        Some(Path::new("/etc/flexgate/ingress-ca.pem"))
    );
    let report = errors_of(
        "[server]\ndecision_client_ca = \"ingress-ca.pem\"\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"proxy\"\n",
    );
    for needle in [
        "decision_client_ca is set but decision is not",
        "decision_client_ca makes the decision listener speak TLS with tls_cert and tls_key, which are not set",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
}

#[test]
fn body_checked_routes_are_listed_when_a_decision_listener_is_set() {
    let rules = r#"
[kind.doc]
query = "SELECT owner FROM doc WHERE id = $1"
columns = ["owner"]
acl = { read = [["account:{owner}"]] }

[[route]]
name = "doc-by-body"
methods = ["POST"]
path = "/docs"
  [[route.check]]
  permission = "read"
  kind = "doc"
  json = "/doc_id"
"#;
    let with = compile_text(
        &format!("[server]\ndecision = \"127.0.0.1:9191\"\n{rules}"),
        Path::new("rules.toml"),
    )
    .unwrap()
    .warnings
    .to_string();
    assert!(
        with.contains("doc-by-body") && with.contains("reads the body (JSON or a form"),
        "{with}"
    );
    let without = compile_text(rules, Path::new("rules.toml"))
        .unwrap()
        .warnings
        .to_string();
    assert!(
        !without.contains("reads ids from the JSON body"),
        "{without}"
    );
}

#[test]
fn an_h2c_upgrade_is_refused_and_an_empty_host_list_warned() {
    let report = errors_of(
        "[[route]]\nname = \"tunnel\"\nmethods = [\"GET\"]\npath = \"/ws\"\nauth = \"public\"\nupgrades = [\"websocket\", \"h2c\"]\n",
    );
    assert!(
        report.contains("upgrades: \"h2c\" is never allowed"),
        "{report}"
    );
    let open = compile_text("[server]\n", Path::new("rules.toml")).unwrap();
    assert!(
        open.warnings.to_string().contains("allowed_hosts is empty"),
        "{}",
        open.warnings
    );
    let listed = compile_text(
        "[server]\nallowed_hosts = [\"api.example.com\"]\n",
        Path::new("rules.toml"),
    )
    .unwrap();
    assert!(
        !listed.warnings.to_string().contains("allowed_hosts"),
        "{}",
        listed.warnings
    );
}

#[test]
fn decision_headers_must_be_the_ingresss_own() {
    let config = compile_text(
        "[server]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"proxy\"\n[server.decision_headers]\nmethod = \"X-Auth-Method\"\n",
        Path::new("rules.toml"),
    )
    .unwrap();
    assert_eq!(
        config.server.decision_headers.method.as_deref(),
        Some("x-auth-method")
    );
    let report = errors_of(
        "[server]\n[server.decision_headers]\nmethod = \"Host\"\nuri = \"X-Flexgate-User-Id\"\nproto = \"bad header\"\nhost = \"X-HTTP-Method-Override\"\n",
    );
    for needle in [
        "method = \"host\"",
        "uri = \"x-flexgate-user-id\"",
        "proto = \"bad header\"",
        "host = \"x-http-method-override\"",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
}

#[test]
fn control_characters_are_named_not_silent() {
    // Found by the `rules` fuzz target: toml reports NUL with an empty message.
    let report = errors_of("# a comment with a NUL \0 in it\n[[route]]\n");
    assert!(
        report.contains("rules.toml:1: error: control character U+0000 is not allowed"),
        "{report}"
    );
}

#[test]
fn a_login_form_counts_with_flexmeasures_and_needs_a_post() {
    let route = |methods: &str| {
        format!(
            "[[route]]\nname = \"login\"\nmethods = {methods}\npath = \"/login\"\nauth = \"public\"\nlogin_form = \"email\"\n"
        )
    };
    let native = compile_text(&route("[\"GET\", \"POST\"]"), Path::new("rules.toml"))
        .unwrap()
        .warnings
        .to_string();
    assert!(
        native.contains("login_form") && native.contains("not counted"),
        "{native}"
    );
    let fm = "[identity]\nsource = \"flexmeasures\"\n";
    let get_only = errors_of(&format!("{fm}{}", route("[\"GET\"]")));
    assert!(
        get_only.contains("on a route that takes POST"),
        "{get_only}"
    );
    assert!(
        compile_text(
            &format!("{fm}{}", route("[\"GET\", \"POST\"]")),
            Path::new("rules.toml")
        )
        .is_ok()
    );
}

#[test]
fn plain_text_multipart_reads_no_json_and_needs_room_in_the_budget() {
    const KIND: &str = "[kind.sensor]\nquery = \"SELECT account_id FROM sensor WHERE id = $1\"\ncolumns = [\"account_id\"]\n[kind.sensor.acl]\ncreate-children = \"account:{account_id}\"\n";
    let upload = |extra: &str, limits: &str| {
        format!(
            "{limits}{KIND}[[route]]\nname = \"upload\"\nmethods = [\"POST\"]\npath = \"/sensors/{{id}}/upload\"\nplain_text_multipart = true\n{extra}[[route.check]]\npermission = \"create-children\"\nkind = \"sensor\"\npath = \"id\"\n"
        )
    };
    let config = compile_text(&upload("", ""), Path::new("rules.toml")).unwrap();
    let route = &config.rules.routes[0];
    assert!(route.plain_text_multipart && route.needs_body);
    assert_eq!(config.server.limits.max_multipart_body_bytes, 4 << 20);
    let report = errors_of(&upload("plain_text_json = [\"/name\"]\n", ""));
    assert!(
        report.contains(
            "route \"upload\": plain_text_multipart reads the body as multipart/form-data"
        ),
        "{report}"
    );
    let report = errors_of(&upload(
        "",
        "[server.limits]\nmax_buffered_body_bytes = 4194304\n",
    ));
    assert!(
        report.contains("max_multipart_body_bytes = 4194304, more than the 3670016 bytes max_buffered_body_bytes = 4194304 leaves"),
        "{report}"
    );
    // Without such a route, a small budget is no error.
    let small = "[server.limits]\nmax_buffered_body_bytes = 4194304\n";
    assert!(compile_text(small, Path::new("rules.toml")).is_ok());
    let public = "[[route]]\nname = \"up\"\nmethods = [\"POST\"]\npath = \"/up\"\nauth = \"public\"\nplain_text_multipart = true\n";
    assert!(errors_of(public).contains("plain_text_multipart) apply to routes that authorize"));
}

#[test]
fn max_duration_json_takes_iso_durations_only() {
    let route = |bound: &str| {
        format!(
            "[kind.sensor]\nquery = \"SELECT account_id FROM sensor WHERE id = $1\"\ncolumns = [\"account_id\"]\n[kind.sensor.acl]\ncreate-children = \"account:{{account_id}}\"\n[[route]]\nname = \"trigger\"\nmethods = [\"POST\"]\npath = \"/sensors/{{id}}/trigger\"\nmax_duration_json = {{ \"/duration\" = \"{bound}\" }}\n[[route.check]]\npermission = \"create-children\"\nkind = \"sensor\"\npath = \"id\"\n"
        )
    };
    let config = compile_text(&route("P31D"), Path::new("rules.toml")).unwrap();
    let r = &config.rules.routes[0];
    assert!(r.needs_body);
    assert_eq!(
        r.max_duration_json[0].1,
        std::time::Duration::from_secs(31 * 86400)
    );
    let report = errors_of(&route("31 days"));
    assert!(
        report.contains("route \"trigger\": max_duration_json: \"31 days\" for /duration is not an ISO 8601 duration"),
        "{report}"
    );
}
