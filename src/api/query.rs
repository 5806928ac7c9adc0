//! EC2 Query protocol parameters: the decoded `name=value` pairs of a form body or query string,
//! with the lookups EC2 actions need (required values, booleans, `Name.N` lists and
//! `Filter.N.Name` / `Filter.N.Value.M` filters), each failing with the EC2 error that names the
//! parameter.

use std::collections::BTreeMap;

use super::error::ApiError;
use crate::task::store::{Filter, MAX_FILTER_VALUE_LEN, MAX_FILTER_VALUES, MAX_FILTERS};

/// Parameters every action takes.
const COMMON: [&str; 3] = ["Action", "Version", "DryRun"];

/// The decoded parameters of one request.
#[derive(Debug, Clone, Default)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// Parses the query string and (for a form POST) the body. A parameter given twice is
    /// refused rather than guessed at. `X-Amz-*` parameters (a presigned signature) are not
    /// action parameters and are left out.
    pub fn parse(raw_query: &str, form_body: Option<&[u8]>) -> Result<Self, ApiError> {
        let mut pairs = super::sigv4::parse_pairs(raw_query).map_err(|e| ApiError::malformed_request(&e))?;
        if let Some(body) = form_body {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::malformed_request("the form body is not UTF-8 text"))?;
            pairs.extend(super::sigv4::parse_pairs(text.trim_end()).map_err(|e| ApiError::malformed_request(&e))?);
        }
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if k.starts_with("X-Amz-") {
                continue;
            }
            if k.is_empty() {
                return Err(ApiError::malformed_request("a parameter without a name"));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::invalid(&k, "the parameter is given more than once"));
            }
        }
        Ok(Self { map })
    }

    /// Every parameter value, in name order.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.map.values().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// A parameter that must be present and not empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.get(name) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            Some(_) => Err(ApiError::invalid(name, "the value is empty")),
            None => Err(ApiError::missing(name)),
        }
    }

    /// `DryRun` (and other booleans): `true` or `false`, any case; absent is false.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(ApiError::invalid(name, &format!("{v:?} is not true or false"))),
        }
    }

    /// Refuses parameters the action does not take (EC2's `UnknownParameter`); `allowed` are
    /// exact names, `prefixes` cover lists (`BundleId.`, `Filter.`).
    pub fn only(&self, allowed: &[&str], prefixes: &[&str]) -> Result<(), ApiError> {
        match self.map.keys().find(|k| {
            !COMMON.contains(&k.as_str())
                && !allowed.contains(&k.as_str())
                && !prefixes.iter().any(|p| k.starts_with(p))
        }) {
            Some(k) => Err(ApiError::unknown_parameter(k)),
            None => Ok(()),
        }
    }

    /// The values of `Name.1`, `Name.2`, … in index order. Indexes start at 1; gaps are allowed
    /// (EC2 clients number from 1 without gaps, but the order is what matters). More than
    /// `max_items` values, or a value longer than `max_len` characters, is refused naming it.
    pub fn list(&self, name: &str, max_items: usize, max_len: usize) -> Result<Vec<String>, ApiError> {
        let prefix = format!("{name}.");
        let mut items: Vec<(u32, String)> = Vec::new();
        for (k, v) in self.map.range(prefix.clone()..) {
            let Some(rest) = k.strip_prefix(&prefix) else { break };
            let n = index(k, rest)?;
            items.push((n, v.clone()));
        }
        if items.len() > max_items {
            return Err(ApiError::invalid(
                &format!("{name}.N"),
                &format!("{} values given; at most {max_items} are taken", items.len()),
            ));
        }
        if let Some((n, v)) = items.iter().find(|(_, v)| v.chars().count() > max_len) {
            return Err(ApiError::invalid(
                &format!("{name}.{n}"),
                &format!(
                    "the value is {} characters long; at most {max_len} are taken",
                    v.chars().count()
                ),
            ));
        }
        items.sort_by_key(|(n, _)| *n);
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    /// `Filter.N.Name` with `Filter.N.Value.M`, checked against the names DescribeBundleTasks
    /// knows.
    pub fn filters(&self, known: &[&str]) -> Result<Vec<Filter>, ApiError> {
        /// Per filter index: its name, and its values with their indexes.
        type Parts = (Option<String>, Vec<(u32, String)>);
        let mut by_index: BTreeMap<u32, Parts> = BTreeMap::new();
        for (k, v) in self.map.range("Filter.".to_string()..) {
            let Some(rest) = k.strip_prefix("Filter.") else { break };
            let (n, field) = rest.split_once('.').ok_or_else(|| ApiError::unknown_parameter(k))?;
            let n = index(k, n)?;
            let entry = by_index.entry(n).or_default();
            match field.split_once('.') {
                None if field == "Name" => entry.0 = Some(v.clone()),
                Some(("Value", m)) => entry.1.push((index(k, m)?, v.clone())),
                _ => return Err(ApiError::unknown_parameter(k)),
            }
        }
        if by_index.len() > MAX_FILTERS {
            return Err(ApiError::invalid(
                "Filter.N",
                &format!("{} filters given; at most {MAX_FILTERS} are taken", by_index.len()),
            ));
        }
        let mut out = Vec::new();
        for (n, (name, mut values)) in by_index {
            if values.len() > MAX_FILTER_VALUES {
                return Err(ApiError::invalid(
                    &format!("Filter.{n}.Value.N"),
                    &format!("{} values given; at most {MAX_FILTER_VALUES} are taken", values.len()),
                ));
            }
            if let Some((m, v)) = values.iter().find(|(_, v)| v.chars().count() > MAX_FILTER_VALUE_LEN) {
                return Err(ApiError::invalid(
                    &format!("Filter.{n}.Value.{m}"),
                    &format!(
                        "the value is {} characters long; at most {MAX_FILTER_VALUE_LEN} are taken",
                        v.chars().count()
                    ),
                ));
            }
            let pname = format!("Filter.{n}.Name");
            let name = name.ok_or_else(|| ApiError::missing(&pname))?;
            if !known.contains(&name.as_str()) {
                return Err(ApiError::invalid_filter(&name, known));
            }
            if values.is_empty() {
                return Err(ApiError::missing(&format!("Filter.{n}.Value.1")));
            }
            values.sort_by_key(|(m, _)| *m);
            out.push(Filter {
                name,
                values: values.into_iter().map(|(_, v)| v).collect(),
            });
        }
        Ok(out)
    }
}

/// A list index: a decimal number from 1.
fn index(param: &str, s: &str) -> Result<u32, ApiError> {
    match s.parse::<u32>() {
        Ok(n) if n >= 1 && !s.starts_with('0') => Ok(n),
        _ => Err(ApiError::invalid(param, "list indexes are whole numbers from 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ApiError) -> String {
        e.code.to_string()
    }

    #[test]
    fn form_and_query_are_decoded_and_merged() {
        let p = Params::parse(
            "Action=DescribeBundleTasks&Version=2016-11-15",
            Some(b"BundleId.2=bun-2&BundleId.1=bun-1&Storage.S3.UploadPolicy=eyJh%2Bb%3D%3D&x=a+b%20c\n"),
        )
        .unwrap();
        assert_eq!(p.get("Action"), Some("DescribeBundleTasks"));
        assert_eq!(p.list("BundleId", 100, 64).unwrap(), ["bun-1", "bun-2"]);
        assert_eq!(p.get("Storage.S3.UploadPolicy"), Some("eyJh+b=="));
        assert_eq!(p.get("x"), Some("a b c"));
    }

    #[test]
    fn lists_sort_numerically() {
        let body: String = (1..=12).map(|i| format!("BundleId.{i}=b{i}&")).collect();
        let p = Params::parse("", Some(body.as_bytes())).unwrap();
        let l = p.list("BundleId", 100, 64).unwrap();
        assert_eq!(l.len(), 12);
        assert_eq!(l[1], "b2");
        assert_eq!(l[11], "b12");
    }

    #[test]
    fn bad_input_names_the_parameter() {
        assert_eq!(code(Params::parse("a=%zz", None).unwrap_err()), "InvalidParameterValue");
        assert_eq!(
            code(Params::parse("Action=A&Action=B", None).unwrap_err()),
            "InvalidParameterValue"
        );
        let p = Params::parse("DryRun=yes&InstanceId=&BundleId.0=x&Foo=1", None).unwrap();
        let e = p.flag("DryRun").unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue");
        assert!(e.message.contains("DryRun"), "{}", e.message);
        let e = p.required("InstanceId").unwrap_err();
        assert!(e.message.contains("InstanceId"), "{}", e.message);
        let e = p.required("Storage.S3.Bucket").unwrap_err();
        assert_eq!(
            (e.code, e.message.contains("Storage.S3.Bucket")),
            ("MissingParameter", true)
        );
        assert_eq!(code(p.list("BundleId", 100, 64).unwrap_err()), "InvalidParameterValue");
        let e = p.only(&["InstanceId"], &["BundleId."]).unwrap_err();
        assert_eq!((e.code, e.message.contains("Foo")), ("UnknownParameter", true));
    }

    #[test]
    fn filters_group_names_and_values() {
        let known = ["state", "instance-id"];
        let p = Params::parse(
            "Filter.1.Name=state&Filter.1.Value.2=failed&Filter.1.Value.1=complete&Filter.2.Name=instance-id&Filter.2.Value.1=i-*",
            None,
        )
        .unwrap();
        let f = p.filters(&known).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].name.as_str(), f[0].values.clone()),
            ("state", vec!["complete".to_string(), "failed".to_string()])
        );
        assert_eq!(f[1].values, ["i-*"]);
        let e = Params::parse("Filter.1.Name=colour&Filter.1.Value.1=red", None)
            .unwrap()
            .filters(&known)
            .unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue");
        assert!(e.message.contains("colour"), "{}", e.message);
        let e = Params::parse("Filter.1.Value.1=red", None)
            .unwrap()
            .filters(&known)
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.contains("Filter.1.Name")),
            ("MissingParameter", true)
        );
        let e = Params::parse("Filter.1.Name=state", None)
            .unwrap()
            .filters(&known)
            .unwrap_err();
        assert_eq!(e.code, "MissingParameter");
        let e = Params::parse("Filter.1.Colour=x", None)
            .unwrap()
            .filters(&known)
            .unwrap_err();
        assert_eq!(e.code, "UnknownParameter");
    }
}
