//! FHIRPath syntax: a tokenizer and a precedence-climbing parser into [`Expr`].
//!
//! Precedence (FHIRPath N1 §6, highest first): `.` and `[]`; unary `+ -`; `* / div mod`;
//! `+ - &`; `is as`; `|`; `< > <= >=`; `= ~ != !~`; `in contains`; `and`; `xor or`; `implies`.

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Empty,
    Bool(bool),
    Str(String),
    /// The literal's text, so that decimals keep their precision.
    Number(String),
    /// `@2019-01-01`, `@2019-01-01T10:00`, `@T10:00` (without the `@`).
    Date(String),
    DateTime(String),
    Time(String),
    Quantity(String, String),
    /// A name at the start of a path or after `.`: element, or type name at the root.
    Ident(String),
    /// `$this`, `$index`, `$total`.
    Special(String),
    /// `%resource`, `%context`, `%ucum`, `%sct`, ...
    Env(String),
    /// `focus.name(args)`; `focus` is `None` for a call at the root.
    Call(Option<Box<Expr>>, String, Vec<Expr>),
    Member(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Unary(char, Box<Expr>),
    Binary(String, Box<Expr>, Box<Expr>),
    /// `is` / `as` with a type name.
    TypeOp(String, Box<Expr>, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Number(String),
    Date(String),
    Special(String),
    Env(String),
    Op(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' || c == '`' {
            let (text, next) = quoted(&chars, i)?;
            out.push(if c == '\'' {
                Tok::Str(text)
            } else {
                Tok::Ident(text)
            });
            i = next;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            out.push(Tok::Number(chars[start..i].iter().collect()));
        } else if c == '@' {
            let start = i + 1;
            i += 1;
            // A '.' belongs to the literal only before digits (milliseconds), not a `.is(...)`.
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || "-:+TZ".contains(chars[i])
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            let literal: String = chars[start..i].iter().collect();
            // `@2015T` is a date-time to year precision.
            out.push(Tok::Date(literal));
        } else if c == '$' || c == '%' {
            i += 1;
            let name = if chars.get(i) == Some(&'`') || chars.get(i) == Some(&'\'') {
                let (t, next) = quoted(&chars, i)?;
                i = next;
                t
            } else {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                chars[start..i].iter().collect()
            };
            out.push(if c == '$' {
                Tok::Special(name)
            } else {
                Tok::Env(name)
            });
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = if ["<=", ">=", "!=", "!~"].contains(&two.as_str()) {
                two
            } else if "+-*/&|<>=~.,()[]{}".contains(c) {
                c.to_string()
            } else {
                return Err(format!("unexpected character '{c}'"));
            };
            i += op.chars().count();
            out.push(Tok::Op(op));
        }
    }
    Ok(out)
}

/// A quoted string or identifier from `chars[i]` (the quote), with FHIRPath escapes.
fn quoted(chars: &[char], i: usize) -> Result<(String, usize), String> {
    let q = chars[i];
    let mut j = i + 1;
    let mut text = String::new();
    while j < chars.len() && chars[j] != q {
        if chars[j] == '\\' {
            j += 1;
            match chars.get(j) {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('r') => text.push('\r'),
                Some('f') => text.push('\u{c}'),
                Some('u') => {
                    let hex: String = chars
                        .get(j + 1..j + 5)
                        .ok_or("bad \\u escape")?
                        .iter()
                        .collect();
                    let code = u32::from_str_radix(&hex, 16).map_err(|_| "bad \\u escape")?;
                    text.push(char::from_u32(code).ok_or("bad \\u escape")?);
                    j += 4;
                }
                Some(c) => text.push(*c),
                None => return Err("unterminated string".into()),
            }
        } else {
            text.push(chars[j]);
        }
        j += 1;
    }
    if j >= chars.len() {
        return Err("unterminated string".into());
    }
    Ok((text, j + 1))
}

pub fn parse(s: &str) -> Result<Expr, String> {
    let toks = tokenize(s)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.expr(0)?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected {:?}", p.toks[p.pos]));
    }
    Ok(e)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

/// Binary operators by precedence level, lowest first.
const LEVELS: &[&[&str]] = &[
    &["implies"],
    &["or", "xor"],
    &["and"],
    &["in", "contains"],
    &["=", "~", "!=", "!~"],
    &["<", ">", "<=", ">="],
    &["|"],
    &["is", "as"],
    &["+", "-", "&"],
    &["*", "/", "div", "mod"],
];

/// The calendar duration words a quantity literal may use as its unit (`4 days`).
pub const UNITS: &[&str] = &[
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn op_at(&self) -> Option<String> {
        match self.peek()? {
            Tok::Op(o) => Some(o.clone()),
            Tok::Ident(w) => Some(w.clone()),
            _ => None,
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        match self.peek() {
            Some(Tok::Op(o)) if o == op => {
                self.pos += 1;
                Ok(())
            }
            other => Err(format!("expected '{op}', found {other:?}")),
        }
    }

    fn expr(&mut self, level: usize) -> Result<Expr, String> {
        if level >= LEVELS.len() {
            return self.unary();
        }
        let mut left = self.expr(level + 1)?;
        while let Some(op) = self.op_at() {
            if !LEVELS[level].contains(&op.as_str()) {
                break;
            }
            self.pos += 1;
            if op == "is" || op == "as" {
                let ty = self.type_name()?;
                left = Expr::TypeOp(op, Box::new(left), ty);
            } else {
                let right = self.expr(level + 1)?;
                left = Expr::Binary(op, Box::new(left), Box::new(right));
            }
        }
        Ok(left)
    }

    fn type_name(&mut self) -> Result<String, String> {
        let mut name = match self.toks.get(self.pos) {
            Some(Tok::Ident(n)) => n.clone(),
            other => return Err(format!("expected a type name, found {other:?}")),
        };
        self.pos += 1;
        if self.peek() == Some(&Tok::Op(".".into()))
            && let Some(Tok::Ident(n)) = self.toks.get(self.pos + 1)
        {
            name = format!("{name}.{n}");
            self.pos += 2;
        }
        Ok(name)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if let Some(Tok::Op(o)) = self.peek()
            && (o == "+" || o == "-")
        {
            let c = o.chars().next().unwrap_or('+');
            self.pos += 1;
            let e = self.unary()?;
            return Ok(Expr::Unary(c, Box::new(e)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.term()?;
        loop {
            match self.peek() {
                Some(Tok::Op(o)) if o == "." => {
                    self.pos += 1;
                    let name = match self.toks.get(self.pos) {
                        Some(Tok::Ident(n)) => n.clone(),
                        other => return Err(format!("expected a name after '.', found {other:?}")),
                    };
                    self.pos += 1;
                    if self.peek() == Some(&Tok::Op("(".into())) {
                        let args = self.args()?;
                        e = Expr::Call(Some(Box::new(e)), name, args);
                    } else {
                        e = Expr::Member(Box::new(e), name);
                    }
                }
                Some(Tok::Op(o)) if o == "[" => {
                    self.pos += 1;
                    let i = self.expr(0)?;
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), Box::new(i));
                }
                _ => return Ok(e),
            }
        }
    }

    fn args(&mut self) -> Result<Vec<Expr>, String> {
        self.expect("(")?;
        let mut args = Vec::new();
        if self.peek() == Some(&Tok::Op(")".into())) {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr(0)?);
            match self.peek() {
                Some(Tok::Op(o)) if o == "," => self.pos += 1,
                Some(Tok::Op(o)) if o == ")" => {
                    self.pos += 1;
                    return Ok(args);
                }
                other => return Err(format!("expected ',' or ')', found {other:?}")),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, String> {
        let tok = self.peek().cloned().ok_or("unexpected end of expression")?;
        self.pos += 1;
        Ok(match tok {
            Tok::Str(s) => Expr::Str(s),
            Tok::Number(n) => {
                // A quantity: a number followed by a unit string or a calendar duration word.
                match self.peek().cloned() {
                    Some(Tok::Str(u)) => {
                        self.pos += 1;
                        Expr::Quantity(n, u)
                    }
                    Some(Tok::Ident(u)) if UNITS.contains(&u.as_str()) => {
                        self.pos += 1;
                        Expr::Quantity(n, u)
                    }
                    _ => Expr::Number(n),
                }
            }
            Tok::Date(d) => {
                if let Some(t) = d.strip_prefix('T') {
                    Expr::Time(t.to_owned())
                } else if let Some(year) = d.strip_suffix('T') {
                    Expr::DateTime(year.to_owned())
                } else if d.contains('T') {
                    Expr::DateTime(d)
                } else {
                    Expr::Date(d)
                }
            }
            Tok::Special(s) => Expr::Special(s),
            Tok::Env(s) => Expr::Env(s),
            Tok::Ident(w) if w == "true" || w == "false" => Expr::Bool(w == "true"),
            Tok::Ident(w) => {
                if self.peek() == Some(&Tok::Op("(".into())) {
                    let args = self.args()?;
                    Expr::Call(None, w, args)
                } else {
                    Expr::Ident(w)
                }
            }
            Tok::Op(o) if o == "(" => {
                let e = self.expr(0)?;
                self.expect(")")?;
                e
            }
            Tok::Op(o) if o == "{" => {
                self.expect("}")?;
                Expr::Empty
            }
            Tok::Op(o) => return Err(format!("unexpected '{o}'")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_paths() {
        let e =
            parse("Observation.subject.where(resolve() is Patient) | Observation.code").unwrap();
        assert!(matches!(e, Expr::Binary(ref op, _, _) if op == "|"));
        let e = parse("1 + 2 * 3 = 7 and true").unwrap();
        assert!(matches!(e, Expr::Binary(ref op, _, _) if op == "and"));
        assert!(matches!(
            parse("(Observation.value as Quantity)").unwrap(),
            Expr::TypeOp(..)
        ));
        assert!(matches!(parse("4 'mg'").unwrap(), Expr::Quantity(..)));
        assert!(parse("Patient.name.").is_err());
        assert!(parse("'unterminated").is_err());
    }
}
