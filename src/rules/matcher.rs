//! Route matching: method + path template -> (route, parameters). Pure and
//! deterministic.
//!
//! Precedence an operator can predict: routes are ordered by specificity, comparing
//! templates segment by segment from the left, where a static segment beats a
//! `{param}`, which beats a `{*rest}` catch-all; templates of equal shape keep file
//! order. The first route in that order whose template and method match wins. Matching
//! runs on the normalised path, the same string that is forwarded.

use http::Method;

/// Most parameters one template may have (keeps matching allocation-free).
pub const MAX_PARAMS: usize = 8;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Static(Box<str>),
    /// `{name}`: one non-empty segment.
    Param,
    /// `{*name}`: the rest of the path (at least one character).
    CatchAll,
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Segment::Static(_) => 0,
            Segment::Param => 1,
            Segment::CatchAll => 2,
        }
    }
}

/// A compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written, for messages.
    pub text: String,
    /// Segments after the leading `/`.
    pub segments: Vec<Segment>,
    /// Parameter names in order of appearance.
    pub params: Vec<String>,
    /// The path with one `/` added at the end matches too, with the same parameters
    /// (a route's `trailing_slash = true`, as Flask's `strict_slashes=False`).
    pub trailing_slash: bool,
}

impl Template {
    /// Parse a template; the error says how to write it correctly.
    pub fn parse(text: &str) -> Result<Template, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path {text:?} must start with '/'"));
        };
        if text.contains(['?', '#', '%', '\\', ';'])
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "path {text:?} may not contain '?', '#', '%', '\\', ';', spaces or control characters; write the decoded path"
            ));
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut params = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if part.is_empty() && !last {
                return Err(format!("path {text:?} has an empty segment ('//')"));
            }
            if *part == "." || *part == ".." {
                return Err(format!("path {text:?} has a dot segment"));
            }
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (name, segment) = match inner.strip_prefix('*') {
                    Some(name) if last => (name, Segment::CatchAll),
                    Some(_) => {
                        return Err(format!(
                            "path {text:?}: a catch-all {{*name}} must be the last segment"
                        ));
                    }
                    None => (inner, Segment::Param),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "path {text:?}: parameter {{{inner}}} needs a name of letters, digits and '_'"
                    ));
                }
                if params.iter().any(|p| p == name) {
                    return Err(format!("path {text:?}: parameter {{{name}}} appears twice"));
                }
                params.push(name.to_owned());
                segments.push(segment);
            } else if part.contains(['{', '}']) {
                return Err(format!(
                    "path {text:?}: a parameter must be a whole segment, as in /assets/{{id}}"
                ));
            } else if let Some(c) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
            {
                // Requests arrive with such a character escaped or not (the path
                // normaliser decodes only unreserved escapes), and upstreams decode
                // both: a static segment must have one spelling, or its escaped form
                // would miss this route and fall through to a looser one.
                return Err(format!(
                    "path {text:?}: {c:?} in a fixed segment can be sent escaped and would then miss this route; fixed segments take only letters, digits, '-', '.', '_' and '~' (use a {{param}} for others)"
                ));
            } else {
                segments.push(Segment::Static((*part).into()));
            }
        }
        if params.len() > MAX_PARAMS {
            return Err(format!(
                "path {text:?} has more than {MAX_PARAMS} parameters"
            ));
        }
        Ok(Template {
            text: text.to_owned(),
            segments,
            params,
            trailing_slash: false,
        })
    }

    /// Specificity key: lower sorts first (more specific).
    pub fn precedence_key(&self) -> Vec<u8> {
        self.segments.iter().map(Segment::rank).collect()
    }

    /// Whether two templates match exactly the same paths (same shape, same statics).
    pub fn same_shape(&self, other: &Template, case_insensitive: bool) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Static(a), Segment::Static(b)) => {
                        if case_insensitive {
                            a.eq_ignore_ascii_case(b)
                        } else {
                            a == b
                        }
                    }
                    (a, b) => a.rank() == b.rank(),
                })
    }

    /// A key equal for exactly the templates [`Template::same_shape`] calls equal, so
    /// overlapping routes are found by grouping instead of comparing every pair.
    pub fn shape_key(&self, case_insensitive: bool) -> String {
        let mut key = String::with_capacity(self.text.len());
        for segment in &self.segments {
            key.push('/');
            match segment {
                // Static segments never contain braces (checked by `parse`).
                Segment::Static(s) if case_insensitive => key.push_str(&s.to_ascii_lowercase()),
                Segment::Static(s) => key.push_str(s),
                Segment::Param => key.push_str("{}"),
                Segment::CatchAll => key.push_str("{*}"),
            }
        }
        key
    }

    /// Match a normalised path (starting with `/`), returning parameter values.
    pub fn matches<'p>(&self, path: &'p str, case_insensitive: bool) -> Option<Params<'p>> {
        self.matches_split(&Segments::split(path)?, case_insensitive)
    }

    /// Whether a path of `count` segments has the length this template needs (the
    /// first test of [`Template::matches`]).
    fn can_match_count(&self, count: usize) -> bool {
        match self.segments.last() {
            Some(Segment::CatchAll) => count >= self.segments.len(),
            _ => count == self.segments.len(),
        }
    }

    /// Whether this template can take a trailing slash: it does not end in `/` or a
    /// catch-all already (either would make the option mean nothing or something else).
    pub fn can_take_trailing_slash(&self) -> bool {
        match self.segments.last() {
            Some(Segment::Static(s)) => !s.is_empty(),
            Some(Segment::Param) => true,
            Some(Segment::CatchAll) | None => false,
        }
    }

    /// The shape keys of the paths this template matches: its own and, with
    /// `trailing_slash`, the one with a `/` more.
    pub fn shape_keys(&self, case_insensitive: bool) -> Vec<String> {
        let key = self.shape_key(case_insensitive);
        if self.trailing_slash {
            let slashed = format!("{key}/");
            vec![key, slashed]
        } else {
            vec![key]
        }
    }

    /// Match an already split path (the matcher splits once for all templates).
    fn matches_split<'p>(&self, path: &Segments<'p>, case_insensitive: bool) -> Option<Params<'p>> {
        if self.trailing_slash
            && path.len() == self.segments.len() + 1
            && path.get(path.len() - 1).is_empty()
        {
            return self.matches_split(&path.without_last(), case_insensitive);
        }
        if !self.can_match_count(path.len()) {
            return None;
        }
        // Static segments first, last to first: templates of one API share their
        // leading segments (`api`, `v3_0`) and differ further on, so a template that
        // does not match is usually refused by its first comparison.
        for (i, segment) in self.segments.iter().enumerate().rev() {
            if let Segment::Static(s) = segment {
                let head = path.get(i);
                let equal = if case_insensitive {
                    s.eq_ignore_ascii_case(head)
                } else {
                    **s == *head
                };
                if !equal {
                    return None;
                }
            }
        }
        let mut params = Params::default();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Static(_) => {}
                Segment::Param => {
                    let head = path.get(i);
                    if head.is_empty() {
                        return None;
                    }
                    params.push(head);
                }
                Segment::CatchAll => {
                    let rest = path.rest(i);
                    if rest.is_empty() {
                        return None;
                    }
                    params.push(rest);
                    return Some(params);
                }
            }
        }
        Some(params)
    }
}

/// Most segments a path may have to be matched (longer paths match no route).
pub const MAX_SEGMENTS: usize = 64;

/// A path split at `/` once, without allocating.
struct Segments<'p> {
    path: &'p str,
    /// Byte offset where each segment starts, plus one past the end of the path.
    bounds: [u16; MAX_SEGMENTS + 1],
    len: usize,
}

impl<'p> Segments<'p> {
    fn split(path: &'p str) -> Option<Segments<'p>> {
        if !path.starts_with('/') || path.len() >= usize::from(u16::MAX) {
            return None;
        }
        let mut bounds = [0u16; MAX_SEGMENTS + 1];
        let mut len = 0;
        bounds[0] = 1;
        for (i, b) in path.bytes().enumerate().skip(1) {
            if b == b'/' {
                len += 1;
                if len >= MAX_SEGMENTS {
                    return None;
                }
                // Lengths were checked against u16::MAX above.
                bounds[len] = (i + 1) as u16;
            }
        }
        len += 1;
        bounds[len] = (path.len() + 1) as u16;
        Some(Segments { path, bounds, len })
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The path without its last segment (for a template that takes a trailing slash:
    /// `rest` is not used on it, as such a template has no catch-all).
    fn without_last(&self) -> Segments<'p> {
        Segments {
            path: self.path,
            bounds: self.bounds,
            len: self.len - 1,
        }
    }

    /// The `i`-th segment (without slashes).
    fn get(&self, i: usize) -> &'p str {
        let start = usize::from(self.bounds[i]);
        let end = usize::from(self.bounds[i + 1]) - 1;
        self.path.get(start..end).unwrap_or("")
    }

    /// Everything from the `i`-th segment on.
    fn rest(&self, i: usize) -> &'p str {
        self.path.get(usize::from(self.bounds[i])..).unwrap_or("")
    }
}

/// Parameter values of a match, in template order, borrowed from the path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params<'p> {
    values: [&'p str; MAX_PARAMS],
    len: usize,
}

impl<'p> Params<'p> {
    fn push(&mut self, value: &'p str) {
        // Templates are limited to MAX_PARAMS parameters at parse time.
        if let Some(slot) = self.values.get_mut(self.len) {
            *slot = value;
            self.len += 1;
        }
    }

    /// The value of the `index`-th parameter.
    pub fn get(&self, index: usize) -> Option<&'p str> {
        self.values[..self.len].get(index).copied()
    }

    /// All values in order.
    pub fn as_slice(&self) -> &[&'p str] {
        &self.values[..self.len]
    }
}

/// The methods a route answers. GET implies HEAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods(Vec<Method>);

impl Methods {
    /// Parse method names; the error names the bad one.
    pub fn parse(names: &[String]) -> Result<Methods, String> {
        if names.is_empty() {
            return Err("methods is empty; list at least one, e.g. [\"GET\"]".into());
        }
        let mut methods = Vec::new();
        for name in names {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "method {name:?} must be an upper-case HTTP method such as GET or POST"
                ));
            }
            let method = Method::from_bytes(name.as_bytes())
                .map_err(|_| format!("method {name:?} is not an HTTP method"))?;
            if methods.contains(&method) {
                return Err(format!("method {name} is listed twice"));
            }
            methods.push(method);
        }
        Ok(Methods(methods))
    }

    /// Whether a request with `method` is covered.
    pub fn allows(&self, method: &Method) -> bool {
        self.0.contains(method) || (*method == Method::HEAD && self.0.contains(&Method::GET))
    }

    /// Whether two method sets share a method.
    pub fn overlaps(&self, other: &Methods) -> bool {
        self.0.iter().any(|m| other.allows(m)) || other.0.iter().any(|m| self.allows(m))
    }

    /// The names, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(Method::as_str).collect()
    }
}

/// What matching found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'p> {
    /// This route (index into the rule set's routes) with these parameters.
    Route(usize, Params<'p>),
    /// Some template matches the path, but no route with it allows the method.
    MethodNotAllowed,
    /// No template matches.
    NoRoute,
}

/// The routes in precedence order, ready to match many requests.
///
/// Templates are kept in a tree of segments, so a request walks its own path through
/// the tree instead of trying every route: matching costs about the same at 10 routes as
/// at 10,000. The walk tries a node's static child, then its `{param}` child, then its
/// catch-alls, which visits templates in exactly the precedence order above (the
/// reference, trying every route in that order, is kept in the tests).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    entries: Vec<(usize, Template, Methods)>,
    /// The tree; `nodes[0]` is the root (before the first segment).
    nodes: Vec<Node>,
    case_insensitive: bool,
}

/// One position in the segment tree.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Children by static segment (lower-cased when matching ignores case), sorted for
    /// binary search.
    statics: Vec<(Box<str>, u32)>,
    /// The child for a `{param}` segment.
    param: Option<u32>,
    /// Entries whose template ends here, in precedence (file) order.
    ends: Vec<u32>,
    /// Entries whose template ends here with a `{*rest}`, in precedence order.
    catch_alls: Vec<u32>,
}

impl Node {
    fn static_child(&self, segment: &str, case_insensitive: bool) -> Option<u32> {
        let found = if case_insensitive {
            self.statics.binary_search_by(|(key, _)| {
                key.bytes()
                    .cmp(segment.bytes().map(|b| b.to_ascii_lowercase()))
            })
        } else {
            self.statics
                .binary_search_by(|(key, _)| (**key).cmp(segment))
        };
        found.ok().map(|i| self.statics[i].1)
    }
}

/// The child of `nodes[at]` for the static segment `key`, added if it is new.
fn static_child_or_new(nodes: &mut Vec<Node>, at: usize, key: Box<str>) -> u32 {
    match nodes[at].statics.binary_search_by(|(k, _)| k.cmp(&key)) {
        Ok(i) => nodes[at].statics[i].1,
        Err(i) => {
            let child = nodes.len() as u32;
            nodes[at].statics.insert(i, (key, child));
            nodes.push(Node::default());
            child
        }
    }
}

impl Matcher {
    /// Order `routes` (template, methods in file order) by precedence.
    pub fn build(routes: Vec<(Template, Methods)>, case_insensitive: bool) -> Matcher {
        let mut entries: Vec<(usize, Template, Methods)> = routes
            .into_iter()
            .enumerate()
            .map(|(i, (t, m))| (i, t, m))
            .collect();
        // Stable sort: equal keys keep file order.
        entries.sort_by_cached_key(|(_, t, _)| t.precedence_key());
        let mut nodes = vec![Node::default()];
        for (position, (_, template, _)) in (0u32..).zip(&entries) {
            let mut at = 0usize;
            for segment in &template.segments {
                let next = match segment {
                    Segment::Static(text) => {
                        let key: Box<str> = if case_insensitive {
                            text.to_ascii_lowercase().into()
                        } else {
                            text.clone()
                        };
                        static_child_or_new(&mut nodes, at, key)
                    }
                    Segment::Param => match nodes[at].param {
                        Some(child) => child,
                        None => {
                            let child = nodes.len() as u32;
                            nodes[at].param = Some(child);
                            nodes.push(Node::default());
                            child
                        }
                    },
                    Segment::CatchAll => {
                        // Always the last segment (checked by `Template::parse`).
                        nodes[at].catch_alls.push(position);
                        break;
                    }
                };
                at = next as usize;
            }
            if !matches!(template.segments.last(), Some(Segment::CatchAll)) {
                nodes[at].ends.push(position);
            }
            if template.trailing_slash {
                // The same entry ends one empty segment further too. Entries are
                // visited in precedence order, so every `ends` list stays in it.
                let child = static_child_or_new(&mut nodes, at, "".into());
                nodes[child as usize].ends.push(position);
            }
        }
        Matcher {
            entries,
            nodes,
            case_insensitive,
        }
    }

    /// Find the route for `method` and normalised `path`.
    pub fn find<'p>(&self, method: &Method, path: &'p str) -> Found<'p> {
        let Some(split) = Segments::split(path) else {
            return Found::NoRoute;
        };
        if self.nodes.is_empty() {
            return Found::NoRoute;
        }
        let mut path_matched = false;
        match self.walk(0, &split, 0, Params::default(), method, &mut path_matched) {
            Some((index, params)) => Found::Route(index, params),
            None if path_matched => Found::MethodNotAllowed,
            None => Found::NoRoute,
        }
    }

    /// Depth-first, static before `{param}` before `{*rest}`: each node on the way is
    /// visited once, so the cost is bounded by the path's length and the tree's shape,
    /// not by the number of routes.
    fn walk<'p>(
        &self,
        node: usize,
        split: &Segments<'p>,
        depth: usize,
        params: Params<'p>,
        method: &Method,
        path_matched: &mut bool,
    ) -> Option<(usize, Params<'p>)> {
        let here = &self.nodes[node];
        if depth == split.len() {
            return self.first_allowing(&here.ends, params, method, path_matched);
        }
        let segment = split.get(depth);
        if let Some(child) = here.static_child(segment, self.case_insensitive)
            && let Some(found) = self.walk(
                child as usize,
                split,
                depth + 1,
                params,
                method,
                path_matched,
            )
        {
            return Some(found);
        }
        if let Some(child) = here.param
            && !segment.is_empty()
        {
            let mut with = params;
            with.push(segment);
            if let Some(found) =
                self.walk(child as usize, split, depth + 1, with, method, path_matched)
            {
                return Some(found);
            }
        }
        if !here.catch_alls.is_empty() {
            let rest = split.rest(depth);
            if !rest.is_empty() {
                let mut with = params;
                with.push(rest);
                return self.first_allowing(&here.catch_alls, with, method, path_matched);
            }
        }
        None
    }

    fn first_allowing<'p>(
        &self,
        positions: &[u32],
        params: Params<'p>,
        method: &Method,
        path_matched: &mut bool,
    ) -> Option<(usize, Params<'p>)> {
        for &position in positions {
            let (index, _, methods) = &self.entries[position as usize];
            if methods.allows(method) {
                return Some((*index, params));
            }
            *path_matched = true;
        }
        None
    }

    /// File-order indices of the routes in the order they are tried.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries.iter().map(|(i, _, _)| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Template {
        Template::parse(text).unwrap()
    }

    fn m(names: &[&str]) -> Methods {
        Methods::parse(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn templates_match_whole_segments() {
        let cases: &[(&str, &str, Option<&[&str]>)] = &[
            ("/api/v3_0/assets/{id}", "/api/v3_0/assets/5", Some(&["5"])),
            ("/api/v3_0/assets/{id}", "/api/v3_0/assets/5/sensors", None),
            ("/api/v3_0/assets/{id}", "/api/v3_0/assets/", None),
            ("/api/v3_0/assets/{id}", "/api/v3_0/assets", None),
            (
                "/api/v3_0/assets/{id}/sensors",
                "/api/v3_0/assets/7/sensors",
                Some(&["7"]),
            ),
            ("/a/{x}/b/{y}", "/a/1/b/2", Some(&["1", "2"])),
            ("/files/{*rest}", "/files/a/b/c", Some(&["a/b/c"])),
            ("/files/{*rest}", "/files/", None),
            ("/files/{*rest}", "/files", None),
            ("/", "/", Some(&[])),
            ("/", "/x", None),
            ("/api/", "/api/", Some(&[])),
            ("/api/", "/api", None),
            ("/api", "/api/", None),
            ("/Api", "/api", None),
        ];
        for (template, path, expected) in cases {
            let got = t(template).matches(path, false);
            assert_eq!(
                got.as_ref().map(Params::as_slice),
                *expected,
                "{template} vs {path}"
            );
        }
        assert!(t("/Api/{x}").matches("/aPI/1", true).is_some());
    }

    #[test]
    fn bad_templates_are_explained() {
        for (text, needle) in [
            ("api", "must start with '/'"),
            ("/a//b", "empty segment"),
            ("/a/../b", "dot segment"),
            ("/a/{}", "needs a name"),
            ("/a/{x}/{x}", "appears twice"),
            ("/a/x{id}", "whole segment"),
            ("/a/{*rest}/b", "must be the last segment"),
            ("/a?b", "may not contain"),
            ("/a/%2F", "may not contain"),
            ("/a;b", "may not contain"),
            ("/a b", "may not contain"),
            // One spelling only: each could arrive escaped (%2B, %3A, %40, %C3%A9).
            ("/api/reports/q1+q2", "fixed segment"),
            ("/a/b:c", "fixed segment"),
            ("/a/@me", "fixed segment"),
            ("/caf\u{e9}", "fixed segment"),
            ("/a/(x)", "fixed segment"),
        ] {
            let err = Template::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn most_specific_wins_then_file_order() {
        let routes = vec![
            (t("/api/{*rest}"), m(&["GET"])),                   // 0
            (t("/api/v3_0/sensors/{id}"), m(&["GET"])),         // 1
            (t("/api/v3_0/sensors/data"), m(&["GET", "POST"])), // 2
            (t("/api/v3_0/sensors/{sid}"), m(&["GET"])),        // 3: same shape as 1, later
            (t("/api/v3_0/sensors/{id}"), m(&["DELETE"])),      // 4
        ];
        let matcher = Matcher::build(routes, false);
        let get = Method::GET;
        let found = |method: &Method, path| match matcher.find(method, path) {
            Found::Route(i, _) => Some(i),
            _ => None,
        };
        assert_eq!(
            found(&get, "/api/v3_0/sensors/data"),
            Some(2),
            "static beats param"
        );
        assert_eq!(
            found(&get, "/api/v3_0/sensors/5"),
            Some(1),
            "file order among equals"
        );
        assert_eq!(found(&Method::DELETE, "/api/v3_0/sensors/5"), Some(4));
        assert_eq!(found(&get, "/api/other/thing"), Some(0), "catch-all last");
        assert_eq!(
            found(&Method::HEAD, "/api/v3_0/sensors/5"),
            Some(1),
            "HEAD follows GET"
        );
        assert_eq!(
            matcher.find(&Method::PUT, "/api/v3_0/sensors/5"),
            Found::MethodNotAllowed
        );
        assert_eq!(matcher.find(&get, "/other"), Found::NoRoute);
        assert_eq!(matcher.order().collect::<Vec<_>>(), vec![2, 1, 3, 4, 0]);
    }

    #[test]
    fn a_template_with_a_trailing_slash_matches_both_spellings_with_the_same_params() {
        let mut chart = t("/api/v3_0/assets/{id}/chart");
        chart.trailing_slash = true;
        assert!(chart.can_take_trailing_slash());
        for path in ["/api/v3_0/assets/7/chart", "/api/v3_0/assets/7/chart/"] {
            let params = chart.matches(path, false).expect(path);
            assert_eq!(params.get(0), Some("7"), "{path}");
        }
        for path in [
            "/api/v3_0/assets/7/chart//",
            "/api/v3_0/assets/7/chart/x",
            "/api/v3_0/assets/7/",
            "/api/v3_0/assets/7/chart_data/",
        ] {
            assert!(chart.matches(path, false).is_none(), "{path}");
        }
        let routes = vec![
            (chart.clone(), m(&["GET"])),                       // 0
            (t("/api/v3_0/assets/{id}/{page}/"), m(&["GET"])),  // 1
            (t("/api/v3_0/assets/{id}/chart"), m(&["DELETE"])), // 2: no slash of its own
        ];
        let matcher = Matcher::build(routes, false);
        let found = |method: &Method, path| match matcher.find(method, path) {
            Found::Route(i, params) => Some((i, params.get(0).map(str::to_owned))),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(
            found(&Method::GET, "/api/v3_0/assets/7/chart/"),
            Some((0, Some("7".into())))
        );
        assert_eq!(
            found(&Method::GET, "/api/v3_0/assets/7/chart"),
            Some((0, Some("7".into())))
        );
        assert_eq!(
            found(&Method::GET, "/api/v3_0/assets/7/kpis/"),
            Some((1, Some("7".into())))
        );
        assert_eq!(
            found(&Method::DELETE, "/api/v3_0/assets/7/chart"),
            Some((2, Some("7".into())))
        );
        assert_eq!(
            matcher.find(&Method::DELETE, "/api/v3_0/assets/7/chart/"),
            Found::MethodNotAllowed,
            "the route without trailing_slash does not take the slash"
        );
        for ends in ["/", "/a/{*rest}"] {
            assert!(!t(ends).can_take_trailing_slash(), "{ends}");
        }
        assert!(!t("/api/").can_take_trailing_slash());
        assert_eq!(
            chart.shape_keys(false),
            vec!["/api/v3_0/assets/{}/chart", "/api/v3_0/assets/{}/chart/"]
        );
    }

    #[test]
    fn the_tree_finds_what_trying_every_route_finds() {
        let templates = [
            "/",
            "/api/",
            "/api/{*rest}",
            "/api/v3_0/{*rest}",
            "/api/v3_0/assets",
            "/api/v3_0/assets/{id}",
            "/api/v3_0/assets/{id}/sensors",
            "/api/{v}/assets/{id}",
            "/api/{v}/{w}/{id}",
            "/{a}/assets/{id}",
            "/{a}/{b}/{c}",
            "/{a}/{*rest}",
            "/{*all}",
            "/x/{*rest}",
            "/X/{y}",
            "/Api/V3_0/assets",
            "/api/v3_0/assets/{id}",
        ];
        // Templates that also match with a `/` more (`trailing_slash = true`).
        let slashed = [
            "/api/v3_0/assets/{id}",
            "/api/{v}/assets/{id}",
            "/{a}/{b}",
            "/x/assets",
        ];
        for case_insensitive in [false, true] {
            let routes: Vec<_> = templates
                .iter()
                .map(|text| (text, false))
                .chain(slashed.iter().map(|text| (text, true)))
                .enumerate()
                .map(|(i, (text, trailing_slash))| {
                    let methods: &[&str] = match i % 3 {
                        0 => &["GET"],
                        1 => &["POST"],
                        _ => &["GET", "DELETE"],
                    };
                    let mut template = t(text);
                    template.trailing_slash = trailing_slash;
                    (template, m(methods))
                })
                .collect();
            let matcher = Matcher::build(routes, case_insensitive);
            // Every route tried in precedence order, with no tree.
            fn linear<'p>(
                matcher: &Matcher,
                case_insensitive: bool,
                method: &Method,
                path: &'p str,
            ) -> Found<'p> {
                let split = Segments::split(path).unwrap();
                let mut matched = false;
                for (index, template, methods) in &matcher.entries {
                    if let Some(params) = template.matches_split(&split, case_insensitive) {
                        if methods.allows(method) {
                            return Found::Route(*index, params);
                        }
                        matched = true;
                    }
                }
                if matched {
                    Found::MethodNotAllowed
                } else {
                    Found::NoRoute
                }
            }
            // Every path of up to five segments over a small alphabet.
            let words = ["api", "API", "v3_0", "assets", "sensors", "1", "x", ""];
            let mut paths = vec![String::new()];
            let mut checked = 0;
            for _ in 0..5 {
                paths = paths
                    .iter()
                    .flat_map(|p| words.iter().map(move |w| format!("{p}/{w}")))
                    .collect();
                for path in &paths {
                    for method in [Method::GET, Method::POST, Method::DELETE, Method::HEAD] {
                        assert_eq!(
                            matcher.find(&method, path),
                            linear(&matcher, case_insensitive, &method, path),
                            "{method} {path} (case_insensitive {case_insensitive})"
                        );
                        checked += 1;
                    }
                }
            }
            assert!(checked > 100_000);
        }
    }

    #[test]
    fn shapes_and_methods_overlap() {
        assert!(t("/a/{x}").same_shape(&t("/a/{y}"), false));
        assert!(!t("/a/{x}").same_shape(&t("/a/b"), false));
        assert!(t("/A/{x}").same_shape(&t("/a/{y}"), true));
        assert!(!t("/A/{x}").same_shape(&t("/a/{y}"), false));
        for (a, b) in [
            ("/a/{x}", "/a/{y}"),
            ("/a/{x}", "/a/b"),
            ("/A/{x}", "/a/{y}"),
            ("/a/{*x}", "/a/{y}"),
            ("/a/", "/a"),
            ("/", "/{x}"),
            ("/a/b", "/a/b/"),
        ] {
            for ci in [false, true] {
                assert_eq!(
                    t(a).same_shape(&t(b), ci),
                    t(a).shape_key(ci) == t(b).shape_key(ci),
                    "{a} {b} {ci}"
                );
            }
        }
        assert!(m(&["GET"]).overlaps(&m(&["HEAD"])));
        assert!(!m(&["GET"]).overlaps(&m(&["POST"])));
    }

    #[test]
    fn methods_are_checked() {
        assert!(Methods::parse(&[]).is_err());
        assert!(Methods::parse(&["get".into()]).is_err());
        assert!(Methods::parse(&["GET".into(), "GET".into()]).is_err());
        assert!(Methods::parse(&["PROPFIND".into()]).is_ok());
    }
}
