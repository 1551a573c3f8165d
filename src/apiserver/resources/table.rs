//! `as=Table` output as kube-apiserver's CRD handler builds it (apiextensions-apiserver's
//! `tableconvertor`): a Name column, then the declared printer columns, or `Age` alone when
//! none are declared; cells evaluated with JSONPath (first result only); `date` cells shown as
//! the age kubectl prints; each row carrying the object as `includeObject` asks.

use super::Cx;
use crate::apiserver::apierrors::Status;
use crate::crd::PrinterColumn;
use jsonpath_rust::parser::model::JpQuery;
use serde_json::{json, Value};

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATION_TIMESTAMP_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing (`"object": null`).
    None,
    /// A `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object (kubectl `--sort-by` and custom printers need it).
    Object,
}

/// The `includeObject` parameter; a bad value is the 400 kube-apiserver answers.
pub fn include_object(value: &str) -> Result<IncludeObject, Status> {
    match value {
        "" | "Metadata" => Ok(IncludeObject::Metadata),
        "Object" => Ok(IncludeObject::Object),
        "None" => Ok(IncludeObject::None),
        other => Err(Status::bad_request(format!(
            "Unable to convert to Table as requested: includeObject: Invalid value: {other:?}: must be 'Metadata', 'Object', 'None', or empty"
        ))),
    }
}

/// One printer column, with its JSONPath parsed once per request.
struct Column {
    def: PrinterColumn,
    path: Path,
}

enum Path {
    /// `.a.b.c`: a plain field walk, the common case, without the JSONPath machinery.
    Fields(Vec<String>),
    /// Anything else (`[0]`, `[*]`, filters), as RFC 9535 JSONPath.
    Query(Box<JpQuery>),
    /// A path that does not parse: every cell is empty, as in kube.
    Invalid,
}

impl Path {
    fn parse(json_path: &str) -> Path {
        let p = json_path.trim();
        let p = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')).unwrap_or(p);
        let simple = p.starts_with('.')
            && p[1..]
                .split('.')
                .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        if simple {
            return Path::Fields(p[1..].split('.').map(str::to_string).collect());
        }
        let rooted = if p.starts_with('$') {
            p.to_string()
        } else {
            format!("${p}")
        };
        match jsonpath_rust::parser::parse_json_path(&rooted) {
            Ok(q) => Path::Query(Box::new(q)),
            Err(_) => Path::Invalid,
        }
    }

    /// The first result, as kube's convertor uses only `results[0][0]`.
    fn first<'a>(&self, obj: &'a Value) -> Option<&'a Value> {
        match self {
            Path::Fields(fields) => fields.iter().try_fold(obj, |cur, f| cur.get(f.as_str())),
            Path::Query(q) => jsonpath_rust::query::js_path_process(q, obj)
                .ok()?
                .into_iter()
                .next()
                .map(|r| r.val),
            Path::Invalid => None,
        }
    }
}

fn columns(cx: &Cx) -> Vec<Column> {
    let declared = cx
        .res
        .versions
        .iter()
        .find(|v| format!("{}/{}", cx.group, v.name) == cx.api_version)
        .map(|v| v.additional_printer_columns.clone())
        .unwrap_or_default();
    let defs = if declared.is_empty() {
        vec![PrinterColumn {
            name: "Age".into(),
            type_: "date".into(),
            json_path: ".metadata.creationTimestamp".into(),
            description: Some(CREATION_TIMESTAMP_DESCRIPTION.into()),
            format: None,
            priority: 0,
        }]
    } else {
        declared
    };
    defs.into_iter()
        .map(|def| Column {
            path: Path::parse(&def.json_path),
            def,
        })
        .collect()
}

/// A Table of `items`; `with_columns: false` leaves `columnDefinitions` null, as kube-apiserver
/// sends every watch event after the first.
pub fn table(cx: &Cx, items: &[Value], list_meta: Value, with_columns: bool, include: IncludeObject) -> Value {
    let columns = columns(cx);
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            cells.extend(columns.iter().map(|c| cell(&c.def.type_, c.path.first(o), now)));
            let object = match include {
                IncludeObject::None => Value::Null,
                IncludeObject::Metadata => super::output::partial(o),
                IncludeObject::Object => o.clone(),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let defs = if with_columns {
        let mut defs = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0}),
        ];
        defs.extend(columns.iter().map(|c| {
            let description = c.def.description.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| {
                format!(
                    "Custom resource definition column (in JSONPath format): {}",
                    c.def.json_path
                )
            });
            json!({"name": c.def.name, "type": c.def.type_, "format": c.def.format.clone().unwrap_or_default(),
                   "description": description, "priority": c.def.priority})
        }));
        json!(defs)
    } else {
        Value::Null
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

/// A cell as kube's `cellForJSONValue` makes it: strings printed as Go prints the value, other
/// types kept when the value has that type, dates turned into ages.
fn cell(type_: &str, value: Option<&Value>, now: jiff::Timestamp) -> Value {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Value::Null;
    };
    match type_ {
        "string" => Value::String(go_print(v)),
        "integer" => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => v.clone(),
            Value::Number(n) => n.as_f64().map(|f| json!(f.trunc() as i64)).unwrap_or(Value::Null),
            _ => Value::Null,
        },
        "number" => match v {
            Value::Number(_) => v.clone(),
            _ => Value::Null,
        },
        "boolean" => match v {
            Value::Bool(_) => v.clone(),
            _ => Value::Null,
        },
        "date" => match v.as_str() {
            Some(s) => match s.parse::<jiff::Timestamp>() {
                Ok(t) => Value::String(human_duration(now.as_second() - t.as_second())),
                Err(_) => Value::String("<invalid>".into()),
            },
            None => Value::Null,
        },
        _ => Value::Null,
    }
}

/// A value as Go's `fmt.Print` shows what JSONPath found: strings bare, maps as `map[k:v]`,
/// slices as `[a b]`.
fn go_print(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(go_print).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", go_print(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// k8s.io/apimachinery's `duration.HumanDuration`, which kubectl shows as AGE.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (730 * 86400, "2y"),
            (731 * 86400, "2y1d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn paths_take_the_first_result() {
        let obj = json!({"spec": {"tags": ["a", "b"], "n": 3},
            "status": {"conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        let get = |p: &str| Path::parse(p).first(&obj).cloned();
        assert_eq!(get(".spec.n"), Some(json!(3)));
        assert_eq!(get(".spec.tags[0]"), Some(json!("a")));
        assert_eq!(get(".spec.tags[*]"), Some(json!("a")));
        assert_eq!(
            get(r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(json!("True"))
        );
        assert_eq!(get(".spec.missing"), None);
        assert_eq!(get(".spec[["), None, "an invalid path gives empty cells");
    }

    #[test]
    fn cells_follow_the_column_type() {
        let now = jiff::Timestamp::from_second(1_000_000).expect("time");
        assert_eq!(cell("string", Some(&json!(5)), now), json!("5"));
        assert_eq!(
            cell("string", Some(&json!({"b": 1, "a": [1, "x"]})), now),
            json!("map[a:[1 x] b:1]")
        );
        assert_eq!(cell("integer", Some(&json!("5")), now), Value::Null);
        assert_eq!(cell("integer", Some(&json!(2.7)), now), json!(2));
        assert_eq!(cell("boolean", Some(&json!(true)), now), json!(true));
        assert_eq!(cell("date", Some(&json!("1970-01-12T13:41:40Z")), now), json!("5m"));
        assert_eq!(cell("date", Some(&json!("yesterday")), now), json!("<invalid>"));
        assert_eq!(cell("string", None, now), Value::Null);
    }
}
