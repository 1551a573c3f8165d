//! Field selectors as k8s.io/apimachinery's `fields.ParseSelector` reads them. One parse for
//! what a list or watch selects and for what authorization sees of it: the name a selector
//! pins (RBAC `resourceNames`) and the requirements a SubjectAccessReview carries. Terms split
//! on unescaped commas and are sorted, the first operator of a term splits it (nothing is
//! trimmed), and values are unescaped (`\\`, `\,`, `\=`), with Go's error texts.

/// One term: `field=value` (`==` alike) or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub field: String,
    pub equals: bool,
    pub value: String,
}

/// The terms of `selector`, split on commas not escaped by a backslash.
fn split_terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut start, mut in_slash) = (0, false);
    for (i, c) in selector.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// `(field, equals, raw value)` at the term's first operator, `!=` before `==` before `=`.
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, equals) in [("!=", false), ("==", true), ("=", true)] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], equals, value));
            }
        }
    }
    None
}

/// A value with its escapes removed; unescaped `,` or `=` and unknown escapes are errors.
fn unescape(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut in_slash = false;
    for c in value.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(format!("invalid field selector: invalid escape sequence: \\{c}"));
            }
            out.push(c);
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' || c == '=' {
            // Go formats the rune with %v: its number.
            return Err(format!(
                "invalid field selector: unescaped character in value: {}",
                u32::from(c)
            ));
        } else {
            out.push(c);
        }
    }
    if in_slash {
        return Err("invalid field selector: invalid escape sequence: \\".into());
    }
    Ok(out)
}

/// `value` escaped for a selector term (`fields.EscapeValue`).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The requirements of `selector` in kube's order (terms sorted), or why it does not parse.
pub fn parse(selector: &str) -> Result<Vec<Requirement>, String> {
    if selector.is_empty() {
        return Ok(Vec::new());
    }
    let mut terms = split_terms(selector);
    terms.sort_unstable();
    let mut out = Vec::new();
    for term in terms.into_iter().filter(|t| !t.is_empty()) {
        let (field, equals, raw) =
            split_term(term).ok_or_else(|| format!("invalid selector: '{selector}'; can't understand '{term}'"))?;
        out.push(Requirement {
            field: field.to_string(),
            equals,
            value: unescape(raw)?,
        });
    }
    Ok(out)
}

/// The value `field` must equal, as `Selector.RequiresExactMatch` finds it: the first equality
/// term on that field.
pub fn exact_match<'a>(reqs: &'a [Requirement], field: &str) -> Option<&'a str> {
    reqs.iter()
        .find(|r| r.equals && r.field == field)
        .map(|r| r.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(field: &str, equals: bool, value: &str) -> Requirement {
        Requirement {
            field: field.into(),
            equals,
            value: value.into(),
        }
    }

    #[test]
    fn terms_sorted_split_and_unescaped_as_go_does() {
        assert_eq!(parse("").expect("empty"), vec![]);
        assert_eq!(
            parse("metadata.namespace=ns,metadata.name==a").expect("two"),
            vec![req("metadata.name", true, "a"), req("metadata.namespace", true, "ns")]
        );
        assert_eq!(
            parse("a!=b=c").expect_err("unescaped ="),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(parse(r"a=x\,y").expect("escaped comma"), vec![req("a", true, "x,y")]);
        assert_eq!(escape(r"x,y=z\"), r"x\,y\=z\\");
        assert_eq!(
            parse(&format!("a={}", escape(r"x,y=z\"))).expect("round trip")[0].value,
            r"x,y=z\"
        );
        assert_eq!(parse("a!=x,").expect("trailing comma"), vec![req("a", false, "x")]);
        assert_eq!(
            parse("metadata.name=a,b").expect_err("b has no operator"),
            "invalid selector: 'metadata.name=a,b'; can't understand 'b'"
        );
        assert_eq!(
            parse(r"a=x\y").expect_err("unknown escape"),
            r"invalid field selector: invalid escape sequence: \y"
        );
        let reqs = parse("metadata.name!=x,spec.a=1,metadata.name=y").expect("three");
        assert_eq!(exact_match(&reqs, "metadata.name"), Some("y"));
        assert_eq!(
            exact_match(&parse("metadata.name!=x").expect("ne"), "metadata.name"),
            None
        );
    }
}
