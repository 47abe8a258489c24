//! Table-driven tests of the pure policy engine: every principal-matching case of
//! FlexMeasures' `user_matches_principals`, the order of `check_access`, the role
//! decorators, and the full FlexMeasures permission matrix.

use super::acl::parse_term;
use super::*;

fn principal(user_id: i64, roles: &[&str], account_id: i64, account_roles: &[&str]) -> Principal {
    Principal {
        user_id,
        account_id,
        roles: roles.iter().map(|s| s.to_string()).collect(),
        account_roles: account_roles.iter().map(|s| s.to_string()).collect(),
    }
}

const COLUMNS: &[&str] = &["account_id", "consultancy_account_id", "user_id"];

fn column(name: &str) -> Option<usize> {
    COLUMNS.iter().position(|c| *c == name)
}

fn item(terms: &[&str]) -> Item {
    Item {
        terms: terms
            .iter()
            .map(|t| parse_term(t, column).expect("valid principal"))
            .collect(),
        source: format!("{terms:?}"),
    }
}

fn acl(items: &[&[&str]]) -> Acl {
    Acl {
        items: items.iter().map(|i| item(i)).collect(),
    }
}

// === user_matches_principals, every case of flexmeasures-auth.md ===

#[test]
fn principal_matching_cases() {
    let cases: &[(Principal, &[&[&str]], bool)] = &[
        (principal(19, &[], 1, &[]), &[&["user:19"]], true),
        (principal(19, &[], 1, &[]), &[&["user:28"]], false),
        (
            principal(19, &["gardener"], 1, &[]),
            &[&["role:gardener"]],
            true,
        ),
        (
            principal(19, &["gardener"], 1, &["castle"]),
            &[&["role:gardener", "account-role:castle"]],
            true,
        ),
        (
            principal(19, &["gardener"], 1, &["castle"]),
            &[&["role:gardener", "account-role:villa"]],
            false,
        ),
        (principal(19, &[], 113, &[]), &[&["account:114"]], false),
        (principal(19, &[], 113, &[]), &[&["account:113"]], true),
        (
            principal(19, &["waitress"], 113, &["restaurant"]),
            &[&[
                "user:19",
                "account:113",
                "role:waitress",
                "account-role:restaurant",
            ]],
            true,
        ),
        (
            principal(19, &["waitress"], 113, &["hotel"]),
            &[&["user:13", "account:113", "role:waitress", "role:chef"]],
            false,
        ),
        (
            principal(19, &["waitress", "chef"], 113, &["hotel", "cinema"]),
            &[&[
                "user:19",
                "account:113",
                "role:waitress",
                "role:chef",
                "account-role:hotel",
                "account-role:cinema",
            ]],
            true,
        ),
        (
            principal(19, &["waitress"], 113, &["hotel"]),
            &[&["user:13"], &["account:113", "role:waitress", "role:chef"]],
            false,
        ),
        (
            principal(19, &["waitress"], 113, &["hotel"]),
            &[
                &["user:13"],
                &["account:113", "role:waitress"],
                &["role:chef"],
            ],
            true,
        ),
        // Empty items never match; a later item still can.
        (principal(19, &["waitress"], 1, &[]), &[&[]], false),
        (principal(19, &["waitress"], 1, &[]), &[], false),
        (
            principal(19, &["waitress"], 1, &[]),
            &[&[], &["role:waitress"]],
            true,
        ),
        // A group holding every-logged-in-user matches anyone, whatever else it holds.
        (
            principal(19, &[], 1, &[]),
            &[&["every-logged-in-user"]],
            true,
        ),
        (
            principal(19, &[], 1, &[]),
            &[&["account:999", "every-logged-in-user"]],
            true,
        ),
        // Missing values (FlexMeasures renders them as None) and non-digit ids never match.
        (principal(19, &[], 1, &[]), &[&["account:None"]], false),
        (principal(19, &[], 1, &[]), &[&["user:19a"]], false),
        (principal(19, &[], 1, &[]), &[&["user:"]], false),
        (principal(19, &[], 1, &[]), &[&["role:"]], false),
        // Role names match exactly: case matters.
        (principal(19, &["Admin"], 1, &[]), &[&["role:admin"]], false),
    ];
    for (i, (who, items, expected)) in cases.iter().enumerate() {
        let acl = acl(items);
        assert_eq!(
            acl.first_match(who, &[]).is_some(),
            *expected,
            "case {i}: {items:?} for {who:?}"
        );
    }
}

#[test]
fn column_values_resolve_like_flexmeasures_renders_them() {
    // account:{consultancy_account_id} with a NULL consultancy is account:None.
    let acl = acl(&[&["account:{consultancy_account_id}"]]);
    let who = principal(1, &[], 7, &[]);
    let null_row = [Value::Int(7), Value::Null, Value::Null];
    assert_eq!(acl.first_match(&who, &null_row), None);
    let row = [Value::Int(7), Value::Int(7), Value::Null];
    assert_eq!(acl.first_match(&who, &row), Some(0));
    // Text digits name the same id; other text names none.
    let text_row = [Value::Int(1), Value::Text("7".into()), Value::Null];
    assert_eq!(acl.first_match(&who, &text_row), Some(0));
    let bad_row = [Value::Int(1), Value::Text("7 ".into()), Value::Null];
    assert_eq!(acl.first_match(&who, &bad_row), None);
}

#[test]
fn principals_that_cannot_be_parsed_are_refused_with_a_fix() {
    for (text, needle) in [
        ("", "has no prefix"),
        ("acount:1", "unknown prefix \"acount\""),
        ("account:{owner}", "add `owner` to its SELECT list"),
        ("account:x{account_id}", "must be the whole value"),
        ("everyone", "has no prefix"),
    ] {
        let err = parse_term(text, column).unwrap_err();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

// === check_access order ===

fn kind_with(perm: Permission, acl_items: &[&[&str]]) -> KindPolicy {
    let mut acls = vec![None; 4];
    acls[usize::from(perm.0)] = Some(acl(acl_items));
    KindPolicy {
        acls,
        cases: Vec::new(),
    }
}

#[test]
fn check_access_follows_flexmeasures_order() {
    let admins = AdminRoles::default();
    let kind = kind_with(Permission::READ, &[&["account:{account_id}"]]);
    let row = [Value::Int(5), Value::Null, Value::Null];
    let member = principal(1, &[], 5, &[]);
    let outsider = principal(2, &[], 6, &[]);
    let admin = principal(3, &["admin"], 6, &[]);
    let reader = principal(4, &["admin-reader"], 6, &[]);

    let cases: &[(Option<&Principal>, Permission, bool, Decision)] = &[
        (
            None,
            Permission::READ,
            true,
            Decision::Deny(Refused::Anonymous),
        ),
        (
            None,
            Permission::READ,
            false,
            Decision::Deny(Refused::Anonymous),
        ),
        // No context is 403 even for admins.
        (
            Some(&admin),
            Permission::READ,
            false,
            Decision::Deny(Refused::NoContext),
        ),
        (
            Some(&admin),
            Permission::DELETE,
            true,
            Decision::Allow(Granted::Admin),
        ),
        (
            Some(&reader),
            Permission::READ,
            true,
            Decision::Allow(Granted::AdminReader),
        ),
        (
            Some(&reader),
            Permission::UPDATE,
            true,
            Decision::Deny(Refused::NotInAcl),
        ),
        (
            Some(&member),
            Permission::READ,
            true,
            Decision::Allow(Granted::Item(0)),
        ),
        (
            Some(&member),
            Permission::UPDATE,
            true,
            Decision::Deny(Refused::NotInAcl),
        ),
        (
            Some(&outsider),
            Permission::READ,
            true,
            Decision::Deny(Refused::NoItemMatched),
        ),
    ];
    for (who, perm, with_context, expected) in cases {
        let resource = with_context.then_some((&kind, &row[..]));
        assert_eq!(
            check_access(*who, *perm, resource, &admins),
            *expected,
            "{who:?} {perm:?} context={with_context}"
        );
    }
}

#[test]
fn admin_role_names_are_configurable() {
    let admins = AdminRoles {
        admin: "superuser".into(),
        admin_reader: "auditor".into(),
    };
    let kind = KindPolicy::default();
    let row: [Value; 0] = [];
    let superuser = principal(1, &["superuser"], 1, &[]);
    let old_admin = principal(2, &["admin"], 1, &[]);
    let auditor = principal(3, &["auditor"], 1, &[]);
    let ctx = Some((&kind, &row[..]));
    assert!(check_access(Some(&superuser), Permission::DELETE, ctx, &admins).is_allowed());
    assert!(!check_access(Some(&old_admin), Permission::DELETE, ctx, &admins).is_allowed());
    assert!(check_access(Some(&auditor), Permission::READ, ctx, &admins).is_allowed());
    assert!(!check_access(Some(&auditor), Permission::UPDATE, ctx, &admins).is_allowed());
}

#[test]
fn cases_replace_the_acl_set_when_they_hold() {
    let mut kind = kind_with(Permission::READ, &[&["account:{account_id}"]]);
    let mut public = vec![None; 4];
    public[1] = Some(acl(&[&["every-logged-in-user"]]));
    kind.cases.push((Condition::IsNull(0), public));
    let admins = AdminRoles::default();
    let anyone = principal(9, &[], 9, &[]);
    let public_row = [Value::Null, Value::Null, Value::Null];
    let owned_row = [Value::Int(1), Value::Null, Value::Null];
    assert!(
        check_access(
            Some(&anyone),
            Permission::READ,
            Some((&kind, &public_row)),
            &admins
        )
        .is_allowed()
    );
    assert!(
        !check_access(
            Some(&anyone),
            Permission::READ,
            Some((&kind, &owned_row)),
            &admins
        )
        .is_allowed()
    );
    // The case replaces the whole set: update is not in it, so admins only.
    assert_eq!(
        check_access(
            Some(&anyone),
            Permission::UPDATE,
            Some((&kind, &public_row)),
            &admins
        ),
        Decision::Deny(Refused::NotInAcl)
    );
    assert!(Condition::NotNull(0).holds(&owned_row));
    assert!(Condition::Equals(0, Value::Int(1)).holds(&owned_row));
    assert!(!Condition::Equals(0, Value::Int(2)).holds(&owned_row));
    // A column beyond the row counts as NULL.
    assert!(Condition::IsNull(7).holds(&owned_row));
}

// === role decorators ===

fn roles(
    required: &[&str],
    accepted: &[&str],
    acc_req: &[&str],
    acc_acc: &[&str],
) -> RoleRequirements {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
    RoleRequirements {
        required: v(required),
        accepted: v(accepted),
        account_required: v(acc_req),
        account_accepted: v(acc_acc),
        admin_passes_required: true,
    }
}

#[test]
fn role_requirements_follow_flexmeasures_decorators() {
    let admins = AdminRoles::default();
    let admin = principal(1, &["admin"], 1, &[]);
    let runner = principal(2, &["task-runner"], 1, &[]);
    let both = principal(3, &["a", "b"], 1, &["MDC", "Prosumer"]);
    let nobody = principal(4, &[], 1, &[]);

    type Case<'a> = (&'a Principal, RoleRequirements, Result<(), RoleRefused>);
    let cases: Vec<Case> = vec![
        (&both, roles(&["a", "b"], &[], &[], &[]), Ok(())),
        (
            &runner,
            roles(&["a", "task-runner"], &[], &[], &[]),
            Err(RoleRefused::Required),
        ),
        (&admin, roles(&["task-runner"], &[], &[], &[]), Ok(())),
        (&runner, roles(&[], &["x", "task-runner"], &[], &[]), Ok(())),
        (
            &nobody,
            roles(&[], &["x", "y"], &[], &[]),
            Err(RoleRefused::Accepted),
        ),
        (&admin, roles(&[], &["x", "y"], &[], &[]), Ok(())),
        (&both, roles(&[], &[], &["MDC", "Prosumer"], &[]), Ok(())),
        (
            &both,
            roles(&[], &[], &["MDC", "Supplier"], &[]),
            Err(RoleRefused::AccountRequired),
        ),
        (&admin, roles(&[], &[], &["Supplier"], &[]), Ok(())),
        (&both, roles(&[], &[], &[], &["Supplier", "MDC"]), Ok(())),
        (
            &nobody,
            roles(&[], &[], &[], &["Supplier"]),
            Err(RoleRefused::AccountAccepted),
        ),
        (&admin, roles(&[], &[], &[], &["Supplier"]), Ok(())),
        (&nobody, roles(&[], &[], &[], &[]), Ok(())),
    ];
    for (who, req, expected) in cases {
        assert_eq!(check_roles(who, &req, &admins), expected, "{who:?} {req:?}");
    }
    // An explicit opt-out (FlexMeasures' task-runner endpoint) takes admin's bypass away.
    let mut strict = roles(&["task-runner"], &[], &[], &[]);
    strict.admin_passes_required = false;
    assert_eq!(
        check_roles(&admin, &strict, &admins),
        Err(RoleRefused::Required)
    );
    assert_eq!(check_roles(&runner, &strict, &admins), Ok(()));
}

#[test]
fn role_suffix_joins_names_in_english() {
    let s = |r: &[&str]| role_message_suffix(&r.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    assert_eq!(s(&["a"]), " It requires a permission(s).");
    assert_eq!(s(&["a", "b"]), " It requires a and b permission(s).");
    assert_eq!(
        s(&["a", "b", "c"]),
        " It requires a, b, and c permission(s)."
    );
}

// === the FlexMeasures permission matrix ===

/// The personas, in the column order of the expectations below.
fn personas() -> Vec<(&'static str, Principal)> {
    // Account 1 (A) is consulted by account 2 (C, a Consultancy); account 3 (D) is
    // another consultancy, consulting for account 4 (E, unrelated to A).
    vec![
        ("member", principal(10, &[], 1, &[])),
        ("account-admin", principal(11, &["account-admin"], 1, &[])),
        (
            "consultant of C",
            principal(20, &["consultant"], 2, &["Consultancy"]),
        ),
        ("member of C", principal(21, &[], 2, &["Consultancy"])),
        (
            "consultant of D",
            principal(30, &["consultant"], 3, &["Consultancy"]),
        ),
        ("unrelated", principal(40, &["account-admin"], 4, &[])),
        ("admin", principal(50, &["admin"], 4, &[])),
        ("admin-reader", principal(51, &["admin-reader"], 4, &[])),
    ]
}

const OWNER: &[&str] = &["account:{account_id}"];
const CONSULTANT: &[&str] = &["account:{consultancy_account_id}", "role:consultant"];
const ACCOUNT_ADMIN: &[&str] = &["account:{account_id}", "role:account-admin"];
const SELF: &[&str] = &["user:{user_id}"];

/// The ACLs of the FlexMeasures models, as flexmeasures-auth.md tabulates them.
fn flexmeasures_kinds() -> Vec<(&'static str, KindPolicy)> {
    let set = |entries: &[(Permission, &[&[&str]])]| {
        let mut acls = vec![None; 4];
        for (perm, items) in entries {
            acls[usize::from(perm.0)] = Some(acl(items));
        }
        acls
    };
    use Permission as P;
    let account = set(&[
        (P::READ, &[OWNER, CONSULTANT]),
        (P::UPDATE, &[OWNER, CONSULTANT]),
        (P::CREATE_CHILDREN, &[ACCOUNT_ADMIN, CONSULTANT]),
    ]);
    let user = set(&[
        (P::READ, &[OWNER, CONSULTANT]),
        (P::UPDATE, &[SELF, ACCOUNT_ADMIN, CONSULTANT]),
    ]);
    let public = set(&[(P::READ, &[&["every-logged-in-user"]])]);
    let asset = KindPolicy {
        acls: set(&[
            (P::READ, &[OWNER, CONSULTANT]),
            (P::UPDATE, &[OWNER, CONSULTANT]),
            (P::CREATE_CHILDREN, &[OWNER, CONSULTANT]),
            (P::DELETE, &[ACCOUNT_ADMIN, CONSULTANT]),
        ]),
        cases: vec![(Condition::IsNull(0), public.clone())],
    };
    let sensor = KindPolicy {
        acls: set(&[
            (P::READ, &[OWNER, CONSULTANT]),
            (P::UPDATE, &[ACCOUNT_ADMIN, CONSULTANT]),
            (P::CREATE_CHILDREN, &[OWNER, CONSULTANT]),
            (P::DELETE, &[ACCOUNT_ADMIN, CONSULTANT]),
        ]),
        cases: vec![(Condition::IsNull(0), public)],
    };
    let account_audit = set(&[(P::READ, &[ACCOUNT_ADMIN, CONSULTANT])]);
    let user_audit = set(&[(P::READ, &[SELF, ACCOUNT_ADMIN, CONSULTANT])]);
    let platform = set(&[(
        P::CREATE_CHILDREN,
        &[
            &["role:admin"],
            &["role:consultant", "account-role:Consultancy"],
        ],
    )]);
    let plain = |acls| KindPolicy {
        acls,
        cases: Vec::new(),
    };
    vec![
        ("account", plain(account)),
        ("user", plain(user)),
        ("asset", asset),
        ("sensor", sensor),
        ("account-auditlog", plain(account_audit)),
        ("user-auditlog", plain(user_audit)),
        ("platform", plain(platform)),
    ]
}

#[test]
fn flexmeasures_permission_matrix() {
    let admins = AdminRoles::default();
    let kinds = flexmeasures_kinds();
    let kind = |name: &str| &kinds.iter().find(|(n, _)| *n == name).unwrap().1;
    // Owner rows: [account_id, consultancy_account_id, user_id]. A = 1, C = 2.
    let of_a = vec![Value::Int(1), Value::Int(2), Value::Null];
    let user_self = vec![Value::Int(1), Value::Int(2), Value::Int(10)];
    let user_colleague = vec![Value::Int(1), Value::Int(2), Value::Int(12)];
    let public = vec![Value::Null, Value::Null, Value::Null];
    let none: Vec<Value> = Vec::new();

    // Columns: member, account-admin, consultant of C, member of C, consultant of D,
    // unrelated, admin, admin-reader. T = allowed.
    let matrix: &[(&str, &str, &Vec<Value>, [&str; 4])] = &[
        //  kind               resource            create-children read    update   delete
        (
            "account",
            "account A",
            &of_a,
            ["FTTFFFTF", "TTTFFFTT", "TTTFFFTF", "FFFFFFTF"],
        ),
        (
            "user",
            "user U (the member)",
            &user_self,
            ["FFFFFFTF", "TTTFFFTT", "TTTFFFTF", "FFFFFFTF"],
        ),
        (
            "user",
            "user U2 (a colleague)",
            &user_colleague,
            ["FFFFFFTF", "TTTFFFTT", "FTTFFFTF", "FFFFFFTF"],
        ),
        (
            "asset",
            "asset of A",
            &of_a,
            ["TTTFFFTF", "TTTFFFTT", "TTTFFFTF", "FTTFFFTF"],
        ),
        (
            "asset",
            "public asset",
            &public,
            ["FFFFFFTF", "TTTTTTTT", "FFFFFFTF", "FFFFFFTF"],
        ),
        (
            "sensor",
            "sensor of A",
            &of_a,
            ["TTTFFFTF", "TTTFFFTT", "FTTFFFTF", "FTTFFFTF"],
        ),
        (
            "sensor",
            "sensor on a public asset",
            &public,
            ["FFFFFFTF", "TTTTTTTT", "FFFFFFTF", "FFFFFFTF"],
        ),
        (
            "account-auditlog",
            "audit log of A",
            &of_a,
            ["FFFFFFTF", "FTTFFFTT", "FFFFFFTF", "FFFFFFTF"],
        ),
        (
            "user-auditlog",
            "audit log of U",
            &user_self,
            ["FFFFFFTF", "TTTFFFTT", "FFFFFFTF", "FFFFFFTF"],
        ),
        (
            "platform",
            "the platform",
            &none,
            ["FFTFTFTF", "FFFFFFTT", "FFFFFFTF", "FFFFFFTF"],
        ),
    ];
    let perms = [
        Permission::CREATE_CHILDREN,
        Permission::READ,
        Permission::UPDATE,
        Permission::DELETE,
    ];
    let people = personas();
    let mut failures = Vec::new();
    for (kind_name, resource, row, expectations) in matrix {
        for (perm, expected) in perms.iter().zip(expectations) {
            for ((persona, who), want) in people.iter().zip(expected.chars()) {
                let got = check_access(Some(who), *perm, Some((kind(kind_name), row)), &admins);
                if got.is_allowed() != (want == 'T') {
                    failures.push(format!(
                        "{resource}: {} by {persona}: expected {want}, got {got:?}",
                        Permission::BUILTIN[usize::from(perm.0)]
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn consultancy_reaches_one_level_only() {
    // C consults for A, and D consults for C. D's consultant gains nothing on A: A's row
    // only names A's own consultancy.
    let admins = AdminRoles::default();
    let kinds = flexmeasures_kinds();
    let account = &kinds[0].1;
    let a_row = [Value::Int(1), Value::Int(2), Value::Null];
    let c_row = [Value::Int(2), Value::Int(3), Value::Null];
    let d_consultant = principal(30, &["consultant"], 3, &["Consultancy"]);
    assert!(
        check_access(
            Some(&d_consultant),
            Permission::READ,
            Some((account, &c_row)),
            &admins
        )
        .is_allowed()
    );
    assert!(
        !check_access(
            Some(&d_consultant),
            Permission::READ,
            Some((account, &a_row)),
            &admins
        )
        .is_allowed()
    );
}
