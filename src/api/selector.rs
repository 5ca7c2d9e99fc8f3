//! Label and field selectors as the API server parses them (apimachinery `pkg/labels` and
//! `pkg/fields`): `app=web,tier!=db`, `env in (a,b)`, `!canary`, `metadata.name=x`.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

/// A parsed label selector; the empty one matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(pub Vec<Requirement>);

impl Labels {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `key=value` pairs every match must carry (for narrowing without a full scan).
    pub fn equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|r| r.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

/// Why a selector was refused; the text is the API server's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

fn label_key_ok(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if p.is_empty() || !super::validation::is_dns_subdomain(p) {
            return Err(format!(
                "invalid label key {}: prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                super::validation::go_quote(k)
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !qualified_chars(name) {
        return Err(format!(
            "invalid label key {}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            super::validation::go_quote(k)
        ));
    }
    Ok(())
}

fn qualified_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label value: empty, or up to 63 of `[A-Za-z0-9_.-]` with alphanumeric ends.
pub fn label_value_ok(v: &str) -> bool {
    v.is_empty() || (v.len() <= 63 && qualified_chars(v))
}

fn value_ok(k: &str, v: &str) -> Result<(), String> {
    if label_value_ok(v) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value: {}: at key: {}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            super::validation::go_quote(v),
            super::validation::go_quote(k)
        ))
    }
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Parses a `labelSelector` query value.
pub fn parse_labels(s: &str) -> Result<Labels, SelectorError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Labels::default());
    }
    let mut reqs = Vec::new();
    for part in split_top(s) {
        let part = part.trim();
        let fail = |m: String| SelectorError(format!("unable to parse requirement: {m}"));
        if part.is_empty() {
            return Err(SelectorError(format!(
                "found '', expected: identifier, or '!' in selector {}",
                super::validation::go_quote(s)
            )));
        }
        let r = if let Some(k) = part.strip_prefix('!') {
            let k = k.trim();
            label_key_ok(k).map_err(fail)?;
            Requirement::NotExists(k.into())
        } else if let Some((k, v)) = part.split_once("!=") {
            let (k, v) = (k.trim(), v.trim());
            label_key_ok(k).map_err(fail)?;
            value_ok(k, v).map_err(fail)?;
            Requirement::NotEquals(k.into(), v.into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            let (k, v) = (k.trim(), v.trim());
            label_key_ok(k).map_err(fail)?;
            value_ok(k, v).map_err(fail)?;
            Requirement::Equals(k.into(), v.into())
        } else if let Some((k, rest)) = set_op(part, " notin ") {
            Requirement::NotIn(k.clone(), set_values(&k, rest).map_err(fail)?)
        } else if let Some((k, rest)) = set_op(part, " in ") {
            Requirement::In(k.clone(), set_values(&k, rest).map_err(fail)?)
        } else {
            if part.contains(|c: char| c.is_whitespace() || "()<>".contains(c)) {
                return Err(SelectorError(format!(
                    "unable to parse requirement: found {}, expected: in, notin, =, ==, !=, gt, lt",
                    super::validation::go_quote(part)
                )));
            }
            label_key_ok(part).map_err(fail)?;
            Requirement::Exists(part.into())
        };
        reqs.push(r);
    }
    Ok(Labels(reqs))
}

fn set_op<'a>(part: &'a str, op: &str) -> Option<(String, &'a str)> {
    let i = part.find(op)?;
    let k = part[..i].trim();
    label_key_ok(k).ok()?;
    Some((k.to_string(), part[i + op.len()..].trim()))
}

fn set_values(k: &str, rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("found {}, expected: '('", super::validation::go_quote(rest)))?;
    let mut vs: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if vs.iter().all(String::is_empty) {
        return Err("for 'in', 'notin' operators, values set can't be empty".into());
    }
    for v in &vs {
        value_ok(k, v)?;
    }
    vs.sort();
    vs.dedup();
    Ok(vs)
}

/// A `LabelSelector` object (matchLabels, matchExpressions) as a selector.
pub fn from_label_selector(s: &LabelSelector) -> Result<Labels, SelectorError> {
    let mut reqs = Vec::new();
    for (k, v) in s.match_labels.iter().flatten() {
        reqs.push(Requirement::Equals(k.clone(), v.clone()));
    }
    for e in s.match_expressions.iter().flatten() {
        let vals = e.values.clone().unwrap_or_default();
        reqs.push(match e.operator.as_str() {
            "In" => Requirement::In(e.key.clone(), vals),
            "NotIn" => Requirement::NotIn(e.key.clone(), vals),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::NotExists(e.key.clone()),
            op => {
                return Err(SelectorError(format!(
                    "{}is not a valid label selector operator",
                    super::validation::go_quote(op)
                )))
            }
        });
    }
    Ok(Labels(reqs))
}

/// A parsed field selector: `field=value` / `field!=value` terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, bool, String)>);

impl Fields {
    /// Whether the object matches, reading each field with `get` (a missing field is "").
    pub fn matches(&self, get: impl Fn(&str) -> String) -> bool {
        self.0.iter().all(|(f, eq, v)| (get(f) == *v) == *eq)
    }

    /// The value a term requires of `field` with `=`, if any.
    pub fn equals(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| *eq && f == field)
            .map(|(_, _, v)| v.as_str())
    }
}

/// Parses a `fieldSelector` query value.
pub fn parse_fields(s: &str) -> Result<Fields, SelectorError> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(Fields::default());
    }
    for part in s.split(',') {
        let part = part.trim();
        let (f, eq, v) = if let Some((f, v)) = part.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, true, v)
        } else {
            return Err(SelectorError(format!(
                "invalid selector: '{part}'; can't understand '{part}'"
            )));
        };
        out.push((f.trim().to_string(), eq, v.trim().to_string()));
    }
    Ok(Fields(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_based_selectors_match_as_kubernetes_does() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app=db", false),
            ("tier in (front, back)", true),
            ("tier notin (front)", false),
            ("env notin (prod)", true),
            ("app,!canary", true),
            ("!app", false),
            ("app in (web),tier", true),
        ] {
            assert_eq!(parse_labels(sel).unwrap().matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn bad_selectors_are_refused_with_the_servers_words() {
        for bad in ["app=we b", "-x=y", "a in b", "a in ()", "a=b,,c=d", "a b"] {
            assert!(parse_labels(bad).is_err(), "{bad} accepted");
        }
        let e = parse_labels("app=-bad").unwrap_err().to_string();
        assert!(e.contains("invalid label value: \"-bad\""), "{e}");
    }

    #[test]
    fn field_selectors_parse_and_match() {
        let f = parse_fields("metadata.name=web,status.phase!=Failed").unwrap();
        let get = |k: &str| match k {
            "metadata.name" => "web".to_string(),
            "status.phase" => "Running".to_string(),
            _ => String::new(),
        };
        assert!(f.matches(get));
        assert_eq!(f.equals("metadata.name"), Some("web"));
        assert!(parse_fields("nonsense").is_err());
    }
}
