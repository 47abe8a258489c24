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

    /// Match a normalised path (starting with `/`), returning parameter values.
    pub fn matches<'p>(&self, path: &'p str, case_insensitive: bool) -> Option<Params<'p>> {
        self.matches_split(&Segments::split(path)?, case_insensitive)
    }

    /// Whether a path of `count` segments has the length this template needs (the
    /// first test of [`Template::matches`], done once per rule set by the matcher).
    fn can_match_count(&self, count: usize) -> bool {
        match self.segments.last() {
            Some(Segment::CatchAll) => count >= self.segments.len(),
            _ => count == self.segments.len(),
        }
    }

    /// Match an already split path (the matcher splits once for all templates).
    fn matches_split<'p>(&self, path: &Segments<'p>, case_insensitive: bool) -> Option<Params<'p>> {
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
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    entries: Vec<(usize, Template, Methods)>,
    /// For each segment count (0 to `MAX_SEGMENTS`), the positions in `entries`, in
    /// precedence order, of the templates that can match a path with that many segments:
    /// a request is tried against a handful of templates, not every route of a large
    /// rule file.
    by_count: Vec<Box<[u32]>>,
    case_insensitive: bool,
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
        let by_count = (0..=MAX_SEGMENTS)
            .map(|count| {
                (0u32..)
                    .zip(&entries)
                    .filter(|(_, (_, t, _))| t.can_match_count(count))
                    .map(|(position, _)| position)
                    .collect()
            })
            .collect();
        Matcher {
            entries,
            by_count,
            case_insensitive,
        }
    }

    /// Find the route for `method` and normalised `path`.
    pub fn find<'p>(&self, method: &Method, path: &'p str) -> Found<'p> {
        let Some(split) = Segments::split(path) else {
            return Found::NoRoute;
        };
        let mut path_matched = false;
        let candidates = self.by_count.get(split.len()).map_or(&[][..], |c| &c[..]);
        for &position in candidates {
            let (index, template, methods) = &self.entries[position as usize];
            if let Some(params) = template.matches_split(&split, self.case_insensitive) {
                if methods.allows(method) {
                    return Found::Route(*index, params);
                }
                path_matched = true;
            }
        }
        if path_matched {
            Found::MethodNotAllowed
        } else {
            Found::NoRoute
        }
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
    fn the_segment_count_index_finds_what_trying_every_route_finds() {
        let templates = [
            "/",
            "/api/",
            "/api/{*rest}",
            "/api/v3_0/{*rest}",
            "/api/v3_0/assets",
            "/api/v3_0/assets/{id}",
            "/api/v3_0/assets/{id}/sensors",
            "/api/{v}/assets/{id}",
            "/{a}/{b}/{c}",
            "/{*all}",
            "/x/{*rest}",
        ];
        let routes: Vec<_> = templates
            .iter()
            .enumerate()
            .map(|(i, text)| (t(text), m(if i % 2 == 0 { &["GET"] } else { &["POST"] })))
            .collect();
        let matcher = Matcher::build(routes, false);
        // Every route tried in precedence order, with no index.
        let linear = |method: &Method, path: &str| {
            let split = Segments::split(path).unwrap();
            let mut matched = false;
            for (index, template, methods) in &matcher.entries {
                if template.matches_split(&split, false).is_some() {
                    if methods.allows(method) {
                        return Some(*index);
                    }
                    matched = true;
                }
            }
            if matched { Some(usize::MAX) } else { None }
        };
        let found = |method: &Method, path: &str| match matcher.find(method, path) {
            Found::Route(i, _) => Some(i),
            Found::MethodNotAllowed => Some(usize::MAX),
            Found::NoRoute => None,
        };
        // Every path of up to five segments over a small alphabet.
        let words = ["api", "v3_0", "assets", "sensors", "1", "x", ""];
        let mut paths = vec![String::new()];
        let mut checked = 0;
        for _ in 0..5 {
            paths = paths
                .iter()
                .flat_map(|p| words.iter().map(move |w| format!("{p}/{w}")))
                .collect();
            for path in &paths {
                for method in [Method::GET, Method::POST] {
                    assert_eq!(
                        found(&method, path),
                        linear(&method, path),
                        "{method} {path}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 30_000);
    }

    #[test]
    fn shapes_and_methods_overlap() {
        assert!(t("/a/{x}").same_shape(&t("/a/{y}"), false));
        assert!(!t("/a/{x}").same_shape(&t("/a/b"), false));
        assert!(t("/A/{x}").same_shape(&t("/a/{y}"), true));
        assert!(!t("/A/{x}").same_shape(&t("/a/{y}"), false));
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
