//! Lists as RabbitMQ's management API returns them: sorted, optionally filtered by name and
//! paged, trimmed to the asked columns (`rabbit_mgmt_util`'s `reply_list_or_paginate`).
//!
//! ```text
//!  rows ─> sort (sort, then the defaults; sort_reverse) ─> page? ─ no ──> columns ─> array
//!                                                              └─ yes ─> name filter ─> slice
//!                                                                        ─> columns ─> page object
//! ```
//!
//! As in RabbitMQ: the `name` filter (case-insensitive substring, or a case-insensitive regular
//! expression with `use_regex=true`) applies only to paged requests; `page_size` defaults to 100
//! and is at most 500; a sort key is a dotted path, and a missing value sorts as 0; values of
//! different types sort in Erlang's term order (numbers, then atoms, then objects, lists and
//! strings last). An empty `sort=` leaves the order as it is.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

/// RabbitMQ's `?DEFAULT_PAGE_SIZE`.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// RabbitMQ's `?MAX_PAGE_SIZE`.
pub const MAX_PAGE_SIZE: usize = 500;
/// RabbitMQ's `?MAX_FILTER_LENGTH`, for a regular expression filter.
const MAX_FILTER_LENGTH: usize = 1024;

/// A request the list cannot answer: a 400 with this `error` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    /// RabbitMQ's error type (`bad_request`, `invalid_pagination_parameters`,
    /// `page_out_of_range`).
    pub error: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.reason)
    }
}

/// Paging asked for by `page` (and `page_size`, `name`, `use_regex`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Paging {
    page: usize,
    page_size: usize,
    name: Option<String>,
    use_regex: bool,
}

/// What a list request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    sort: Option<String>,
    reverse: bool,
    paging: Option<Paging>,
    columns: Option<Vec<Vec<String>>>,
}

fn integer(query: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ListError> {
    match query.get(key) {
        None => Ok(None),
        Some(text) => text.trim().parse().map(Some).map_err(|_| ListError {
            error: "bad_request",
            reason: "Pagination parameters are invalid".into(),
        }),
    }
}

impl ListQuery {
    /// Reads the list parameters of a query string (already split and decoded).
    pub fn parse(query: &HashMap<String, String>) -> Result<ListQuery, ListError> {
        let page = integer(query, "page")?;
        let page_size = integer(query, "page_size")?;
        let use_regex = query.get("use_regex").is_some_and(|value| value == "true");
        let name = query.get("name").filter(|name| !name.is_empty()).cloned();
        if use_regex
            && name
                .as_ref()
                .is_some_and(|name| name.len() > MAX_FILTER_LENGTH)
        {
            return Err(ListError {
                error: "invalid_pagination_parameters",
                reason: "name filter regex is too long".into(),
            });
        }
        let paging = match (page, page_size) {
            (None, _) => None,
            (Some(page), size)
                if page > 0 && size.is_none_or(|size| size > 0 && size <= MAX_PAGE_SIZE as i64) =>
            {
                Some(Paging {
                    page: page as usize,
                    page_size: size.map_or(DEFAULT_PAGE_SIZE, |size| size as usize),
                    name,
                    use_regex,
                })
            }
            (Some(page), size) => {
                let size = size.map_or("undefined".to_string(), |size| size.to_string());
                return Err(ListError {
                    error: "invalid_pagination_parameters",
                    reason: format!(
                        "Invalid pagination parameters: page number {page}, page size {size}"
                    ),
                });
            }
        };
        let columns = query.get("columns").map(|columns| {
            columns
                .split(',')
                .filter(|column| !column.is_empty())
                .map(|column| column.split('.').map(str::to_string).collect())
                .collect()
        });
        Ok(ListQuery {
            sort: query.get("sort").cloned(),
            reverse: query
                .get("sort_reverse")
                .is_some_and(|value| value == "true"),
            paging,
            columns,
        })
    }

    /// Whether a page was asked for (the answer is then a page object, not an array).
    pub fn is_paged(&self) -> bool {
        self.paging.is_some()
    }

    /// Sorts, filters, pages and trims `rows`; `default_sort` is the list's own order
    /// (`["vhost", "name"]` for most).
    pub fn apply(&self, mut rows: Vec<Value>, default_sort: &[&str]) -> Result<Value, ListError> {
        let keys: Vec<&str> = match self.sort.as_deref() {
            Some("") => Vec::new(),
            Some(extra) => {
                let mut keys = vec![extra];
                keys.extend(default_sort.iter().copied().filter(|key| *key != extra));
                keys
            }
            None => default_sort.to_vec(),
        };
        if !keys.is_empty() || self.sort.is_none() {
            let paths: Vec<Vec<&str>> = keys.iter().map(|key| key.split('.').collect()).collect();
            rows.sort_by(|a, b| {
                for path in &paths {
                    let order = term_order(dotted(a, path), dotted(b, path));
                    if order != std::cmp::Ordering::Equal {
                        return order;
                    }
                }
                std::cmp::Ordering::Equal
            });
        }
        if self.reverse && self.sort.as_deref() != Some("") {
            rows.reverse();
        }
        let Some(paging) = &self.paging else {
            return Ok(Value::Array(self.trim_all(rows)));
        };
        let total = rows.len();
        let filtered: Vec<Value> = match &paging.name {
            None => rows,
            Some(name) if paging.use_regex => {
                let regex = regex_lite::RegexBuilder::new(name)
                    .case_insensitive(true)
                    .build();
                match regex {
                    // RabbitMQ lets an invalid expression match nothing.
                    Err(_) => Vec::new(),
                    Ok(regex) => rows
                        .into_iter()
                        .filter(|row| row_name(row).is_some_and(|text| regex.is_match(text)))
                        .collect(),
                }
            }
            Some(name) => {
                let needle = name.to_lowercase();
                rows.into_iter()
                    .filter(|row| {
                        row_name(row).is_some_and(|text| text.to_lowercase().contains(&needle))
                    })
                    .collect()
            }
        };
        let filtered_count = filtered.len();
        let offset = (paging.page - 1) * paging.page_size;
        // Erlang's `lists:sublist/3` takes a start one past the end, not beyond.
        if offset > filtered_count {
            return Err(ListError {
                error: "page_out_of_range",
                reason: format!(
                    "Page out of range, page: {} page size: {}, len: {}",
                    paging.page, paging.page_size, filtered_count
                ),
            });
        }
        let items: Vec<Value> = filtered
            .into_iter()
            .skip(offset)
            .take(paging.page_size)
            .collect();
        let items = self.trim_all(items);
        let mut page = Map::new();
        page.insert("total_count".into(), total.into());
        page.insert("item_count".into(), items.len().into());
        page.insert("filtered_count".into(), filtered_count.into());
        page.insert("page".into(), paging.page.into());
        page.insert("page_size".into(), paging.page_size.into());
        page.insert(
            "page_count".into(),
            filtered_count.div_ceil(paging.page_size).into(),
        );
        page.insert("items".into(), Value::Array(items));
        Ok(Value::Object(page))
    }

    /// Trims one object to the asked columns (for single-object answers).
    pub fn trim(&self, row: Value) -> Value {
        match &self.columns {
            None => row,
            Some(columns) => pick(&row, columns),
        }
    }

    fn trim_all(&self, rows: Vec<Value>) -> Vec<Value> {
        match &self.columns {
            None => rows,
            Some(columns) => rows.iter().map(|row| pick(row, columns)).collect(),
        }
    }
}

fn row_name(row: &Value) -> Option<&str> {
    row.get("name").and_then(Value::as_str)
}

/// The value at a dotted path, `None` when some part is missing.
fn dotted<'a>(row: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut value = row;
    for key in path {
        value = value.get(key)?;
    }
    Some(value)
}

/// Keeps the asked columns of `row`, nested ones as nested objects.
fn pick(row: &Value, columns: &[Vec<String>]) -> Value {
    let mut out = Map::new();
    for column in columns {
        let path: Vec<&str> = column.iter().map(String::as_str).collect();
        if let Some(value) = dotted(row, &path) {
            put(&mut out, &path, value.clone());
        }
    }
    Value::Object(out)
}

fn put(target: &mut Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            target.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = target
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = entry {
                put(inner, rest, value);
            }
        }
    }
}

/// Erlang's term order on JSON values; a missing value is the number 0.
fn term_order(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    fn rank(value: &Value) -> u8 {
        match value {
            Value::Number(_) => 0,
            Value::Bool(_) | Value::Null => 1,
            Value::Object(_) => 2,
            Value::Array(_) => 3,
            Value::String(_) => 4,
        }
    }
    fn atom(value: &Value) -> &'static str {
        match value {
            Value::Bool(true) => "true",
            Value::Bool(false) => "false",
            _ => "null",
        }
    }
    let zero = Value::from(0);
    let a = a.unwrap_or(&zero);
    let b = b.unwrap_or(&zero);
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Bool(_) | Value::Null, Value::Bool(_) | Value::Null) => atom(a).cmp(atom(b)),
        (Value::Array(x), Value::Array(y)) => {
            for (x, y) in x.iter().zip(y) {
                let order = term_order(Some(x), Some(y));
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => x.len().cmp(&y.len()),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn rows() -> Vec<Value> {
        vec![
            json!({"vhost": "/", "name": "orders", "messages": 5}),
            json!({"vhost": "b", "name": "alpha", "messages": 1}),
            json!({"vhost": "/", "name": "Audit", "messages": 12}),
            json!({"vhost": "/", "name": "billing"}),
        ]
    }

    fn names(value: &Value) -> Vec<&str> {
        let list = value
            .get("items")
            .unwrap_or(value)
            .as_array()
            .expect("a list");
        list.iter()
            .map(|row| row["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn the_default_order_is_vhost_then_name_in_byte_order() {
        let listed = ListQuery::parse(&query(&[]))
            .unwrap()
            .apply(rows(), &["vhost", "name"])
            .unwrap();
        assert_eq!(names(&listed), ["Audit", "billing", "orders", "alpha"]);
    }

    #[test]
    fn a_sort_key_comes_first_and_a_missing_value_sorts_as_zero() {
        let listed = ListQuery::parse(&query(&[("sort", "messages")]))
            .unwrap()
            .apply(rows(), &["vhost", "name"])
            .unwrap();
        assert_eq!(names(&listed), ["billing", "alpha", "orders", "Audit"]);
        let reversed = ListQuery::parse(&query(&[("sort", "messages"), ("sort_reverse", "true")]))
            .unwrap()
            .apply(rows(), &["vhost", "name"])
            .unwrap();
        assert_eq!(names(&reversed), ["Audit", "orders", "alpha", "billing"]);
        let unsorted = ListQuery::parse(&query(&[("sort", "")]))
            .unwrap()
            .apply(rows(), &["vhost", "name"])
            .unwrap();
        assert_eq!(names(&unsorted), ["orders", "alpha", "Audit", "billing"]);
    }

    #[test]
    fn a_page_counts_what_the_name_filter_kept() {
        let paged = ListQuery::parse(&query(&[("page", "1"), ("page_size", "2"), ("name", "A")]))
            .unwrap()
            .apply(rows(), &["vhost", "name"])
            .unwrap();
        assert_eq!(names(&paged), ["Audit", "alpha"]);
        assert_eq!(
            (
                &paged["total_count"],
                &paged["filtered_count"],
                &paged["item_count"],
                &paged["page_count"],
                &paged["page_size"],
                &paged["page"]
            ),
            (
                &json!(4),
                &json!(2),
                &json!(2),
                &json!(1),
                &json!(2),
                &json!(1)
            )
        );
        let regex = ListQuery::parse(&query(&[
            ("page", "1"),
            ("name", "^a"),
            ("use_regex", "true"),
        ]))
        .unwrap()
        .apply(rows(), &["vhost", "name"])
        .unwrap();
        assert_eq!(names(&regex), ["Audit", "alpha"]);
        assert_eq!(regex["page_size"], json!(DEFAULT_PAGE_SIZE));
        // Without a page the name filter is not applied, as in RabbitMQ.
        let unpaged = ListQuery::parse(&query(&[("name", "zzz")]))
            .unwrap()
            .apply(rows(), &["vhost", "name"])
            .unwrap();
        assert_eq!(names(&unpaged).len(), 4);
    }

    #[test]
    fn bad_pages_are_refused_with_rabbitmq_texts() {
        let error = ListQuery::parse(&query(&[("page", "0")])).unwrap_err();
        assert_eq!(error.error, "invalid_pagination_parameters");
        assert_eq!(
            error.reason,
            "Invalid pagination parameters: page number 0, page size undefined"
        );
        let error = ListQuery::parse(&query(&[("page", "1"), ("page_size", "501")])).unwrap_err();
        assert_eq!(
            error.reason,
            "Invalid pagination parameters: page number 1, page size 501"
        );
        let error = ListQuery::parse(&query(&[("page", "x")])).unwrap_err();
        assert_eq!(
            (error.error, error.reason.as_str()),
            ("bad_request", "Pagination parameters are invalid")
        );
        let error = ListQuery::parse(&query(&[("page", "6"), ("page_size", "1")]))
            .unwrap()
            .apply(rows(), &["name"])
            .unwrap_err();
        assert_eq!(error.error, "page_out_of_range");
        assert_eq!(
            error.reason,
            "Page out of range, page: 6 page size: 1, len: 4"
        );
        // One past the end is an empty page, not an error.
        let empty = ListQuery::parse(&query(&[("page", "3"), ("page_size", "2")]))
            .unwrap()
            .apply(rows(), &["name"])
            .unwrap();
        assert_eq!(empty["item_count"], json!(0));
    }

    #[test]
    fn columns_keep_nested_paths() {
        let row = json!({"name": "q", "messages": 3, "message_stats": {"publish": 9, "ack": 2}});
        let listed = ListQuery::parse(&query(&[("columns", "name,message_stats.publish,nope")]))
            .unwrap()
            .apply(vec![row], &["name"])
            .unwrap();
        assert_eq!(
            listed,
            json!([{"name": "q", "message_stats": {"publish": 9}}])
        );
    }
}
