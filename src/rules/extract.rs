//! Where a resource id comes from (path parameter, query parameter, header, JSON body
//! field) and how it is read. Pure functions over already-received data; the proxy
//! decides when to buffer a body.
//!
//! Everything ambiguous is refused rather than guessed: a parameter given twice, two
//! alternative names both present, duplicate keys in a JSON object, floats for integer
//! ids. The upstream can then never read a different id than the one checked.

use std::borrow::Cow;
use std::fmt;

use http::HeaderName;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// How a kind's ids look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdType {
    /// Decimal digits (FlexMeasures ids).
    Integer,
    /// Any printable text up to 256 bytes.
    Text,
}

/// A resource id, as checked and as bound to the owner query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourceId {
    /// An integer id.
    Int(i64),
    /// A text id.
    Text(Box<str>),
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceId::Int(i) => write!(f, "{i}"),
            ResourceId::Text(s) => f.write_str(s),
        }
    }
}

/// The result of reading one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdParse {
    /// A well-formed id to look up.
    Id(ResourceId),
    /// Well-formed but beyond any stored id (e.g. past 64 bits): simply not found.
    OutOfRange(String),
    /// Not an id of this type (422).
    Invalid(&'static str),
}

/// Longest text id accepted.
pub const MAX_TEXT_ID: usize = 256;

/// Read an id from text (path segment, query value, header, JSON string).
pub fn parse_text_id(text: &str, ty: IdType) -> IdParse {
    match ty {
        IdType::Integer => {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return IdParse::Invalid("Not a valid integer.");
            }
            match text.parse::<i64>() {
                Ok(id) => IdParse::Id(ResourceId::Int(id)),
                Err(_) => IdParse::OutOfRange(text.chars().take(40).collect()),
            }
        }
        IdType::Text => {
            if text.is_empty() || text.len() > MAX_TEXT_ID || text.chars().any(char::is_control) {
                IdParse::Invalid("Not a valid identifier.")
            } else {
                IdParse::Id(ResourceId::Text(text.into()))
            }
        }
    }
}

/// Read an id from a JSON value. Integers and digit strings are the same id (as
/// marshmallow reads them); floats, booleans, objects and nested lists are invalid.
pub fn parse_json_id(value: &Value, ty: IdType) -> IdParse {
    match (value, ty) {
        (Value::String(s), _) => parse_text_id(s, ty),
        (Value::Number(n), IdType::Integer) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => IdParse::Id(ResourceId::Int(i)),
            (None, Some(u)) => IdParse::OutOfRange(u.to_string()),
            _ => IdParse::Invalid("Not a valid integer."),
        },
        (Value::Number(n), IdType::Text) if n.is_i64() || n.is_u64() => {
            parse_text_id(&n.to_string(), ty)
        }
        _ => IdParse::Invalid(match ty {
            IdType::Integer => "Not a valid integer.",
            IdType::Text => "Not a valid identifier.",
        }),
    }
}

/// A compiled id source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `index`-th parameter of the route template, named `name`.
    Path {
        /// Position in the template's parameters.
        index: usize,
        /// Name, for messages.
        name: String,
    },
    /// A query parameter, or the first present of several names.
    Query(Vec<String>),
    /// A request header.
    Header(HeaderName),
    /// Field(s) of the JSON body.
    Json(JsonPointer),
    /// A field of a form body (`application/x-www-form-urlencoded`) or, as Flask-WTF
    /// reads a JSON body as a form, a top-level key of a JSON object body.
    Form {
        /// The field.
        name: String,
        /// The value that means none (the field is then absent).
        none: Option<i64>,
    },
    /// A column of the route's first resource (e.g. an asset's parent).
    Column {
        /// Position in the first kind's columns.
        index: usize,
        /// Name, for messages.
        name: String,
    },
}

impl Source {
    /// Where the id lives, in FlexMeasures' 422 vocabulary.
    pub fn location(&self) -> &'static str {
        match self {
            Source::Path { .. } => "path",
            Source::Query(_) => "query",
            Source::Header(_) => "headers",
            Source::Json(_) => "json",
            Source::Form { .. } => "form",
            Source::Column { .. } => "resource",
        }
    }

    /// The field name, for 422 bodies and explanations.
    pub fn field(&self) -> String {
        match self {
            Source::Path { name, .. } | Source::Column { name, .. } => name.clone(),
            Source::Query(names) => names.first().cloned().unwrap_or_default(),
            Source::Header(h) => h.as_str().to_owned(),
            Source::Json(p) => p.field_name(),
            Source::Form { name, .. } => name.clone(),
        }
    }

    /// Whether reading this source needs the request body.
    pub fn needs_body(&self) -> bool {
        matches!(self, Source::Json(_) | Source::Form { .. })
    }
}

/// Why ids could not be read from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractError {
    /// The same parameter or header twice, or two alternative names both present (400).
    Ambiguous(String),
}

/// A url-encoded form body as Werkzeug decodes it (`&` between fields, `+` a space,
/// escapes as UTF-8, invalid bytes replaced): an object of text values, a field given
/// more than once an array of them (refused on a form route).
pub fn form_fields(body: &[u8]) -> Value {
    let mut fields = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let value = Value::String(value.into_owned());
        match fields.get_mut(key.as_ref()) {
            None => {
                fields.insert(key.into_owned(), value);
            }
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                fields.insert(key.into_owned(), Value::Array(vec![first, value]));
            }
        }
    }
    Value::Object(fields)
}

/// The raw values of a query parameter (any of `names`), decoded. More than one value is
/// ambiguous.
pub fn query_value<'q>(
    query: &'q str,
    names: &[String],
) -> Result<Option<Cow<'q, str>>, ExtractError> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if names.iter().any(|n| *n == key) {
            if found.is_some() {
                return Err(ExtractError::Ambiguous(format!(
                    "query parameter {key:?} is given more than once (or with its alternative name)"
                )));
            }
            found = Some(value);
        }
    }
    Ok(found)
}

/// One segment of a [`JsonPointer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointerSegment {
    /// An object key (or array index).
    Key(String),
    /// `*`: every element of an array, or every value of an object.
    Any,
    /// `**`: any depth, including none.
    Deep,
}

/// RFC 6901 JSON pointer with two wildcards, `*` and `**`, to reach every id in a body
/// (lists, nested flex-models).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    /// As written.
    pub text: String,
    segments: Vec<PointerSegment>,
    /// Where an object stands in place of an id, the key of its id (`id_in_object`).
    object_key: Option<String>,
}

impl JsonPointer {
    /// Parse `/a/*/b`, `/flex-model/**/sensor`; `~0` and `~1` escape `~` and `/`.
    pub fn parse(text: &str) -> Result<JsonPointer, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "JSON pointer {text:?} must start with '/', as in /account_id"
            ));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            let segment = match raw {
                "*" => PointerSegment::Any,
                "**" => {
                    if segments.last() == Some(&PointerSegment::Deep) {
                        return Err(format!("JSON pointer {text:?} repeats '**'"));
                    }
                    PointerSegment::Deep
                }
                "" => return Err(format!("JSON pointer {text:?} has an empty segment")),
                key => {
                    if key.contains('~') && !valid_escapes(key) {
                        return Err(format!(
                            "JSON pointer {text:?}: '~' must be written ~0 (and '/' as ~1)"
                        ));
                    }
                    PointerSegment::Key(key.replace("~1", "/").replace("~0", "~"))
                }
            };
            segments.push(segment);
        }
        if segments.last() == Some(&PointerSegment::Deep) {
            return Err(format!(
                "JSON pointer {text:?} may not end with '**'; name the field, as in /flex-model/**/sensor"
            ));
        }
        Ok(JsonPointer {
            text: text.to_owned(),
            segments,
            object_key: None,
        })
    }

    /// This pointer, reading an object it reaches as a reference whose id is under
    /// `key` (a list may mix plain ids and `{"sensor": 7, ...}`).
    pub fn with_object_key(mut self, key: &str) -> JsonPointer {
        self.object_key = Some(key.to_owned());
        self
    }

    /// The last named key, for messages.
    pub fn field_name(&self) -> String {
        self.segments
            .iter()
            .rev()
            .find_map(|s| match s {
                PointerSegment::Key(k) => Some(k.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.text.clone())
    }

    /// Every value the pointer reaches, in document order.
    pub fn select<'v>(&self, root: &'v Value) -> Vec<&'v Value> {
        let mut out = Vec::new();
        walk(root, &self.segments, &mut out);
        out
    }
}

fn valid_escapes(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes
        .iter()
        .enumerate()
        .all(|(i, b)| *b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

fn walk<'v>(value: &'v Value, segments: &[PointerSegment], out: &mut Vec<&'v Value>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push(value);
        return;
    };
    match first {
        PointerSegment::Key(key) => {
            let child = match value {
                Value::Object(map) => map.get(key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            if let Some(child) = child {
                walk(child, rest, out);
            }
        }
        PointerSegment::Any => for_each_child(value, |child| walk(child, rest, out)),
        PointerSegment::Deep => {
            walk(value, rest, out);
            for_each_child(value, |child| walk(child, segments, out));
        }
    }
}

fn for_each_child<'v>(value: &'v Value, mut f: impl FnMut(&'v Value)) {
    match value {
        Value::Object(map) => map.values().for_each(&mut f),
        Value::Array(items) => items.iter().for_each(&mut f),
        _ => {}
    }
}

/// The id-bearing values a pointer reaches: arrays are flattened one level, `null`s are
/// absent. A nested list or an object where an id should be is invalid.
/// With an object key (`id_in_object`), an object where an id should be gives the id
/// under that key; without one its id is missing or not an id, it is invalid.
pub fn json_ids(body: &Value, pointer: &JsonPointer, ty: IdType) -> Vec<IdParse> {
    let key = pointer.object_key.as_deref();
    let mut ids = Vec::new();
    for value in pointer.select(body) {
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::Null => {}
                        Value::Array(_) => ids.push(IdParse::Invalid("Not a valid list of ids.")),
                        Value::Object(map) => ids.push(reference_id(map, key, ty)),
                        other => ids.push(parse_json_id(other, ty)),
                    }
                }
            }
            Value::Object(map) if key.is_some() => ids.push(reference_id(map, key, ty)),
            other => ids.push(parse_json_id(other, ty)),
        }
    }
    ids
}

/// How strictly a stored text field is read (`plain_text_json`, `line_text_json`,
/// `quote_free_json`):
/// what an upstream's pages could take for markup or script when they place the text
/// unescaped (FlexMeasures' templates put names into scripts with `|safe`, units and
/// flex-model values into quoted script strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextClass {
    /// No `<`, `>`, backtick, `${`, U+2028/2029 or control characters but tab and line
    /// breaks.
    Plain,
    /// As plain, no tab or line break, and no double quote or backslash: text placed
    /// in a double-quoted attribute or read as one line (apostrophes and `#` allowed).
    Line,
    /// As plain, no tab or line break, and no quotes, backslash or `#` either.
    QuoteFree,
}

impl TextClass {
    /// What the class refuses, for messages.
    pub fn refuses(self) -> &'static str {
        match self {
            TextClass::Plain => "<, >, `, ${ and control characters other than line breaks",
            TextClass::Line => "<, >, `, ${, double quotes, \\, line breaks and control characters",
            TextClass::QuoteFree => "<, >, `, ${, quotes, \\, # and control characters",
        }
    }

    /// Whether `text` is of this class.
    pub fn allows(self, text: &str) -> bool {
        // Plain text may span lines (a description); text inside quoted strings not.
        let control = |c: char| {
            c.is_control() && (self != TextClass::Plain || !matches!(c, '\t' | '\n' | '\r'))
        };
        let markup = text.contains("${")
            || text
                .chars()
                .any(|c| control(c) || matches!(c, '<' | '>' | '`' | '\u{2028}' | '\u{2029}'));
        let quotes = match self {
            TextClass::Plain => false,
            TextClass::Line => text.chars().any(|c| matches!(c, '"' | '\\')),
            TextClass::QuoteFree => text.chars().any(|c| matches!(c, '"' | '\'' | '\\' | '#')),
        };
        !markup && !quotes
    }
}

/// Whether every string in `value` (object keys included, at any depth) is text of
/// the class.
pub fn is_safe_text(value: &Value, class: TextClass) -> bool {
    match value {
        Value::String(text) => class.allows(text),
        Value::Array(items) => items.iter().all(|v| is_safe_text(v, class)),
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| class.allows(k) && is_safe_text(v, class)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

/// Whether the pointer reaches a list in this body: with no ids read from it, an empty
/// one (`[]`, or only nulls), which an upstream may take as "clear them all".
pub fn json_has_list(body: &Value, pointer: &JsonPointer) -> bool {
    pointer
        .select(body)
        .iter()
        .any(|value| matches!(value, Value::Array(_)))
}

/// The id of a reference object, under `key`; without a key, or a scalar under it,
/// invalid (a reference without its id would be an id nobody checked).
fn reference_id(map: &serde_json::Map<String, Value>, key: Option<&str>, ty: IdType) -> IdParse {
    match key.and_then(|k| map.get(k)) {
        Some(Value::Null | Value::Array(_) | Value::Object(_)) | None => match key {
            Some(_) => IdParse::Invalid("A reference must name its id."),
            None => IdParse::Invalid("Not a valid list of ids."),
        },
        Some(id) => parse_json_id(id, ty),
    }
}

/// Parse a JSON body, refusing duplicate object keys (which parsers resolve
/// differently: the check and the upstream could see different ids).
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_ids() {
        use IdParse::*;
        let int = |s| parse_text_id(s, IdType::Integer);
        assert_eq!(int("42"), Id(ResourceId::Int(42)));
        assert_eq!(int("007"), Id(ResourceId::Int(7)));
        assert_eq!(int("8171766575"), Id(ResourceId::Int(8_171_766_575)));
        assert_eq!(
            int("99999999999999999999"),
            OutOfRange("99999999999999999999".into())
        );
        for bad in ["", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "١"] {
            assert!(matches!(int(bad), Invalid(_)), "{bad:?}");
        }
        assert_eq!(
            parse_text_id("job-7", IdType::Text),
            Id(ResourceId::Text("job-7".into()))
        );
        assert!(matches!(parse_text_id("a\nb", IdType::Text), Invalid(_)));
        assert!(matches!(
            parse_text_id(&"x".repeat(257), IdType::Text),
            Invalid(_)
        ));
    }

    #[test]
    fn json_ids_are_read_like_marshmallow_but_strictly() {
        use IdParse::*;
        let int = |v: Value| parse_json_id(&v, IdType::Integer);
        assert_eq!(int(json!(5)), Id(ResourceId::Int(5)));
        assert_eq!(int(json!("5")), Id(ResourceId::Int(5)));
        assert_eq!(int(json!(-5)), Id(ResourceId::Int(-5)));
        assert_eq!(int(json!(u64::MAX)), OutOfRange(u64::MAX.to_string()));
        for bad in [
            json!(5.0),
            json!(5.5),
            json!(true),
            json!({"id": 5}),
            json!("5.0"),
            json!(1e30),
        ] {
            assert!(matches!(int(bad.clone()), Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn text_classes_refuse_what_templates_could_run() {
        use TextClass::*;
        let ok = |v: serde_json::Value, class| is_safe_text(&v, class);
        for fine in [
            "Jane's battery",
            "Küche, 2nd floor",
            "50% (max)",
            "a\nb",
            "$5 {x}",
        ] {
            assert!(ok(json!(fine), Plain), "{fine:?}");
        }
        for code in [
            "</script><script>x()",
            "B${alert(1)}",
            "`x`",
            "a\u{2028}b",
            "a\u{0}b",
            "<b>",
        ] {
            assert!(!ok(json!(code), Plain), "{code:?}");
            assert!(!ok(json!(code), QuoteFree), "{code:?}");
        }
        for fine in [
            "kW",
            "EUR/MWh",
            "°C",
            "m³/h",
            "1 kW",
            "PT2H",
            "2026-12-02T00:00:00+01:00",
        ] {
            assert!(ok(json!(fine), QuoteFree), "{fine:?}");
        }
        for code in ["kW # \";alert(1)//", "1 kW'", "a\\", "x\ny"] {
            assert!(!ok(json!(code), QuoteFree), "{code:?}");
        }
        // One line, no double quote: an attribute's value, a colour.
        for fine in ["Bob's battery", "#1a3443", "Küche, 2nd floor", "50% (max)"] {
            assert!(ok(json!(fine), Line), "{fine:?}");
        }
        for code in [
            "x\" onmouseover=\"alert(1)",
            "#abc\n",
            "a\tb",
            "a\\",
            "<b>",
            "${x}",
        ] {
            assert!(!ok(json!(code), Line), "{code:?}");
        }
        // At any depth, keys included; numbers and nulls are no text.
        assert!(!ok(json!({"a": [{"b": "<i>"}]}), Plain));
        assert!(!ok(json!({"</script>": 1}), Plain));
        assert!(ok(
            json!({"soc-max": 10, "x": [null, true, 1.5, "1 kWh"]}),
            QuoteFree
        ));
    }

    #[test]
    fn pointers_reach_lists_and_nested_fields() {
        let body = json!({
            "account_id": 3,
            "sensors": [1, 2, null],
            "flex-model": [
                {"sensor": 10, "soc-max": {"sensor": 11}},
                {"sensor": "12", "power": "1 MW"}
            ],
            "flex-context": {"consumption-price": {"sensor": 13}, "nested": {"deeper": {"sensor": 14}}},
            "a/b": {"~": 7}
        });
        let ids = |ptr: &str| -> Vec<IdParse> {
            json_ids(&body, &JsonPointer::parse(ptr).unwrap(), IdType::Integer)
        };
        let ints = |v: &[i64]| {
            v.iter()
                .map(|i| IdParse::Id(ResourceId::Int(*i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("/account_id"), ints(&[3]));
        assert_eq!(ids("/sensors"), ints(&[1, 2]));
        assert_eq!(ids("/flex-model/*/sensor"), ints(&[10, 12]));
        assert_eq!(ids("/flex-model/**/sensor"), ints(&[10, 11, 12]));
        assert_eq!(ids("/flex-context/**/sensor"), ints(&[13, 14]));
        assert_eq!(ids("/a~1b/~0"), ints(&[7]));
        assert_eq!(ids("/missing"), ints(&[]));
        assert_eq!(ids("/flex-model/0/sensor"), ints(&[10]));
        let nested = json!({"ids": [[1], {"x": 2}]});
        assert!(
            json_ids(
                &nested,
                &JsonPointer::parse("/ids").unwrap(),
                IdType::Integer
            )
            .iter()
            .all(|r| matches!(r, IdParse::Invalid(_)))
        );
    }

    #[test]
    fn references_mixed_with_plain_ids_are_all_read() {
        use IdParse::*;
        let body = json!({"config": {
            "regressors": [7, "8", {"sensor": 9, "source-types": ["user"]}],
            "one": {"sensor": 10},
            "broken": [{"sources": [1]}, {"sensor": null}, {"sensor": [11]}]
        }});
        let ids = |ptr: &str, key: Option<&str>| -> Vec<IdParse> {
            let pointer = JsonPointer::parse(ptr).unwrap();
            let pointer = match key {
                Some(k) => pointer.with_object_key(k),
                None => pointer,
            };
            json_ids(&body, &pointer, IdType::Integer)
        };
        let int = |i| Id(ResourceId::Int(i));
        assert_eq!(
            ids("/config/regressors", Some("sensor")),
            vec![int(7), int(8), int(9)]
        );
        assert_eq!(ids("/config/one", Some("sensor")), vec![int(10)]);
        // A reference that does not name its id is refused, not skipped.
        let broken = ids("/config/broken", Some("sensor"));
        assert_eq!(broken.len(), 3);
        assert!(broken.iter().all(|r| matches!(r, Invalid(_))), "{broken:?}");
        // Without the key, an object where an id should be stays invalid.
        assert!(matches!(ids("/config/regressors", None)[2], Invalid(_)));
    }

    #[test]
    fn form_bodies_are_decoded_as_werkzeug_decodes_them() {
        assert_eq!(
            form_fields(b"name=A+b%26c&parent_asset_id=7&flag&x=1&x=2"),
            json!({"name": "A b&c", "parent_asset_id": "7", "flag": "", "x": ["1", "2"]})
        );
        assert_eq!(form_fields(b"bad=%ff"), json!({"bad": "\u{fffd}"}));
    }

    #[test]
    fn bad_pointers_are_explained() {
        for (text, needle) in [
            ("account_id", "must start with '/'"),
            ("/a//b", "empty segment"),
            ("/a/**/**/b", "repeats"),
            ("/a/**", "may not end"),
            ("/a~2", "~0"),
        ] {
            let err = JsonPointer::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn strict_json_refuses_duplicate_keys_at_any_depth() {
        assert!(parse_json_strict(br#"{"a": 1, "b": {"c": 2}}"#).is_ok());
        assert!(
            parse_json_strict(br#"{"a": 1, "a": 2}"#)
                .unwrap_err()
                .contains("duplicate key")
        );
        assert!(parse_json_strict(br#"{"x": [{"a": 1, "a": 1}]}"#).is_err());
        assert!(parse_json_strict(br#"{"a": 1} trailing"#).is_err());
        assert!(parse_json_strict(b"").is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(
            parse_json_strict(deep.as_bytes()).is_err(),
            "recursion is bounded"
        );
    }

    #[test]
    fn query_values_refuse_repeats_and_double_names() {
        let names = vec!["account".to_owned(), "account_id".to_owned()];
        assert_eq!(
            query_value("account=3&x=1", &names).unwrap().as_deref(),
            Some("3")
        );
        assert_eq!(
            query_value("account_id=4", &names).unwrap().as_deref(),
            Some("4")
        );
        assert_eq!(query_value("x=1", &names).unwrap(), None);
        assert!(query_value("account=3&account=4", &names).is_err());
        assert!(query_value("account=3&account_id=3", &names).is_err());
        assert!(
            query_value("account=3&%61ccount=4", &names).is_err(),
            "encoded names are decoded"
        );
        assert_eq!(
            query_value("account=1;account=2", &names)
                .unwrap()
                .as_deref(),
            Some("1;account=2")
        );
    }
}
