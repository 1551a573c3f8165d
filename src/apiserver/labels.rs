//! Label selectors as k8s.io/apimachinery's `labels.Parse` reads them: the same lexer (special
//! symbols matched greedily, `in`/`notin` keywords only where an operator may stand), the same
//! grammar and the same error texts, and keys and values validated as label keys and values.
//! kubectl prints these errors as they are, so clients see kube's wording.

use super::names::{label_value_error, qualified_name_errors};

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    End,
    Ident,
    In,
    NotIn,
    Eq,
    DoubleEq,
    NotEq,
    Not,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
    Error,
}

fn special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn symbol(s: &str) -> Option<Tok> {
    Some(match s {
        "=" => Tok::Eq,
        "==" => Tok::DoubleEq,
        "!=" => Tok::NotEq,
        "!" => Tok::Not,
        "(" => Tok::Open,
        ")" => Tok::Close,
        "," => Tok::Comma,
        ">" => Tok::Gt,
        "<" => Tok::Lt,
        _ => return None,
    })
}

/// Splits the selector into tokens, as kube's `Lexer` does.
fn lex(s: &str) -> Vec<(Tok, String)> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        if special(chars[i]) {
            // The longest run of special characters that is a symbol.
            let (mut buf, mut last) = (String::new(), None);
            while i < chars.len() && special(chars[i]) {
                buf.push(chars[i]);
                match symbol(&buf) {
                    Some(t) => last = Some((t, buf.clone())),
                    None if last.is_some() => break,
                    None => {}
                }
                i += 1;
            }
            match last {
                Some(t) => out.push(t),
                None => {
                    out.push((Tok::Error, format!("error expected: keyword found '{buf}'")));
                    out.push((Tok::End, String::new()));
                    return out;
                }
            }
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !special(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let tok = match word.as_str() {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident,
            };
            out.push((tok, word));
        }
    }
}

struct Parser {
    toks: Vec<(Tok, String)>,
    pos: usize,
}

/// Where a token is read: in values, `in` and `notin` are plain identifiers.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Operator,
    Values,
}

impl Parser {
    fn get(&self, ctx: Ctx, at: usize) -> (Tok, String) {
        let (t, l) = self.toks.get(at).cloned().unwrap_or((Tok::End, String::new()));
        let t = match (ctx, t) {
            (Ctx::Values, Tok::In | Tok::NotIn) => Tok::Ident,
            (_, t) => t,
        };
        (t, l)
    }

    fn peek(&self, ctx: Ctx) -> (Tok, String) {
        self.get(ctx, self.pos)
    }

    fn next(&mut self, ctx: Ctx) -> (Tok, String) {
        let t = self.get(ctx, self.pos);
        self.pos += 1;
        t
    }

    fn requirement(&mut self) -> Result<Req, String> {
        let (mut tok, mut key) = self.next(Ctx::Values);
        let negated = tok == Tok::Not;
        if negated {
            (tok, key) = self.next(Ctx::Values);
        }
        if tok != Tok::Ident {
            return Err(format!("found '{key}', expected: identifier"));
        }
        let errs = qualified_name_errors(&key);
        if !errs.is_empty() {
            return Err(format!("key: Invalid value: {key:?}: {}", errs.join("; ")));
        }
        if matches!(self.peek(Ctx::Values).0, Tok::End | Tok::Comma) {
            return Ok(if negated { Req::NotExists(key) } else { Req::Exists(key) });
        }
        if negated {
            // `!key` takes no operator: what follows is the parser's next complaint.
            let (_, lit) = self.peek(Ctx::Values);
            return Err(format!("found '{lit}', expected: ',' or 'end of string'"));
        }
        let (op, lit) = self.next(Ctx::Operator);
        let values = match op {
            Tok::In | Tok::NotIn => self.value_set()?,
            Tok::Eq | Tok::DoubleEq | Tok::NotEq | Tok::Gt | Tok::Lt => vec![self.exact_value()?],
            _ => return Err(format!("found '{lit}', expected: in, notin, =, ==, !=, gt, lt")),
        };
        for (i, v) in values.iter().enumerate() {
            if let Some(why) = label_value_error(v) {
                return Err(format!("values[{i}][{key}]: Invalid value: {v:?}: {why}"));
            }
        }
        let one = || values.first().cloned().unwrap_or_default();
        let int = || {
            one().parse::<i64>().map_err(|_| {
                "values[0]: Invalid value: for 'Gt', 'Lt' operators, the value must be an integer".to_string()
            })
        };
        Ok(match op {
            Tok::In => Req::In(key, values),
            Tok::NotIn => Req::NotIn(key, values),
            Tok::NotEq => Req::Ne(key, one()),
            Tok::Gt => Req::Gt(key, int()?),
            Tok::Lt => Req::Lt(key, int()?),
            _ => Req::Eq(key, one()),
        })
    }

    fn value_set(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.next(Ctx::Values);
        if tok != Tok::Open {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.peek(Ctx::Values);
        let mut set: Vec<String> = Vec::new();
        let insert = |s: String, set: &mut Vec<String>| {
            if !set.contains(&s) {
                set.push(s);
            }
        };
        match tok {
            Tok::Ident | Tok::Comma => loop {
                let (tok, lit) = self.next(Ctx::Values);
                match tok {
                    Tok::Ident => {
                        insert(lit, &mut set);
                        match self.peek(Ctx::Values) {
                            (Tok::Comma, _) => continue,
                            (Tok::Close, _) => {
                                self.next(Ctx::Values);
                                break;
                            }
                            (_, l) => return Err(format!("found '{l}', expected: ',' or ')'")),
                        }
                    }
                    Tok::Comma => {
                        if set.is_empty() {
                            insert(String::new(), &mut set);
                        }
                        match self.peek(Ctx::Values).0 {
                            Tok::Close => {
                                insert(String::new(), &mut set);
                                self.next(Ctx::Values);
                                break;
                            }
                            Tok::Comma => {
                                self.next(Ctx::Values);
                                insert(String::new(), &mut set);
                            }
                            _ => {}
                        }
                    }
                    _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
                }
            },
            Tok::Close => {
                self.next(Ctx::Values);
                insert(String::new(), &mut set);
            }
            _ => return Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
        set.sort();
        Ok(set)
    }

    fn exact_value(&mut self) -> Result<String, String> {
        if matches!(self.peek(Ctx::Values).0, Tok::End | Tok::Comma) {
            return Ok(String::new());
        }
        match self.next(Ctx::Values) {
            (Tok::Ident, v) => Ok(v),
            (_, lit) => Err(format!("found '{lit}', expected: identifier")),
        }
    }
}

/// Parses a label selector; the error is the message of kube's 400.
pub fn parse(selector: &str) -> Result<Vec<Req>, String> {
    let mut p = Parser {
        toks: lex(selector),
        pos: 0,
    };
    let mut reqs = Vec::new();
    loop {
        let (tok, lit) = p.peek(Ctx::Values);
        match tok {
            Tok::Ident | Tok::Not => {
                let r = p
                    .requirement()
                    .map_err(|e| format!("unable to parse requirement: {e}"))?;
                reqs.push(r);
                match p.next(Ctx::Values) {
                    (Tok::End, _) => return Ok(reqs),
                    (Tok::Comma, _) => {
                        let (t2, l2) = p.peek(Ctx::Values);
                        if t2 != Tok::Ident && t2 != Tok::Not {
                            return Err(format!("found '{l2}', expected: identifier after ','"));
                        }
                    }
                    (_, l) => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                }
            }
            Tok::End => return Ok(reqs),
            _ => return Err(format!("found '{lit}', expected: !, identifier, or 'end of string'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_kube_accepts() {
        let ok = |s: &str| parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("app=a"), vec![Req::Eq("app".into(), "a".into())]);
        assert_eq!(
            ok("app==a,!b"),
            vec![Req::Eq("app".into(), "a".into()), Req::NotExists("b".into())]
        );
        assert_eq!(ok("app != a"), vec![Req::Ne("app".into(), "a".into())]);
        assert_eq!(
            ok("env in (prod, qa),tier notin (web)"),
            vec![
                Req::In("env".into(), vec!["prod".into(), "qa".into()]),
                Req::NotIn("tier".into(), vec!["web".into()])
            ]
        );
        assert_eq!(
            ok("x in (in, notin)"),
            vec![Req::In("x".into(), vec!["in".into(), "notin".into()])]
        );
        assert_eq!(ok("n>3,m<10"), vec![Req::Gt("n".into(), 3), Req::Lt("m".into(), 10)]);
        assert_eq!(ok("a="), vec![Req::Eq("a".into(), String::new())]);
        assert_eq!(ok("example.com/key"), vec![Req::Exists("example.com/key".into())]);
        assert!(ok("").is_empty());
    }

    #[test]
    fn errors_are_worded_as_kube_words_them() {
        let err = |s: &str| parse(s).expect_err(s);
        // Both seen from kube-apiserver 1.36 (the differential suite and the kubectl tests).
        assert_eq!(
            err("app===a"),
            "unable to parse requirement: found '=', expected: identifier"
        );
        assert_eq!(
            err("bad label!"),
            "unable to parse requirement: found 'label', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(err("a,"), "found '', expected: identifier after ','");
        assert_eq!(err("a in x"), "unable to parse requirement: found 'x' expected: '('");
        assert!(err("a=b c").starts_with("found 'c', expected: ',' or 'end of string'"));
        assert!(
            err("a=b$").contains("values[0][a]: Invalid value: \"b$\""),
            "{}",
            err("a=b$")
        );
        assert!(err("n>x").contains("must be an integer"));
        assert!(err("bad_key_!").starts_with("unable to parse requirement"));
    }
}
