//! HL7 v2 messages in their usual "pipe and hat" encoding (ER7): segments, fields, repetitions,
//! components and sub-components, with the separators the message declares in MSH-1/MSH-2, its
//! escape sequences, and the character set MSH-18 names.
//!
//! Written here rather than taken from a crate: `hl7-parser` 0.3 slices its escape decoding by
//! character index (wrong as soon as text before an escape is not ASCII, as in "Müller") and
//! decodes `\X..\` only for line breaks; `rust-hl7` 0.5 calls itself experimental; `hl7v2` is
//! AGPL-3.0. What a gateway needs is small: split, unescape, decode the bytes.

use std::fmt;

/// Why a message could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// The character sets of MSH-18 the gateway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Ascii,
    /// ISO 8859-1 (`8859/1`): every byte is the code point of the same number.
    Latin1,
    Utf8,
}

impl Charset {
    /// The MSH-18 value; an empty one means `default`.
    pub fn named(name: &str, default: Charset) -> Result<Charset, ParseError> {
        match name.trim() {
            "" => Ok(default),
            "ASCII" => Ok(Charset::Ascii),
            "8859/1" => Ok(Charset::Latin1),
            "UNICODE UTF-8" | "UTF-8" => Ok(Charset::Utf8),
            other => err(format!("character set {other} (MSH-18) is not supported")),
        }
    }

    fn decode(self, bytes: &[u8]) -> Result<String, ParseError> {
        match self {
            Charset::Ascii if !bytes.is_ascii() => {
                err("MSH-18 says ASCII but the message has 8-bit characters")
            }
            Charset::Ascii | Charset::Utf8 => String::from_utf8(bytes.to_vec())
                .or_else(|_| err("MSH-18 says UTF-8 but the message is not valid UTF-8")),
            Charset::Latin1 => Ok(bytes.iter().map(|&b| b as char).collect()),
        }
    }
}

/// The separators of MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: Option<char>,
    pub subcomponent: char,
}

impl Default for Separators {
    fn default() -> Self {
        Separators {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: '&',
        }
    }
}

impl Separators {
    /// MSH-2 as it should be written back (in an ACK).
    pub fn encoding_characters(&self) -> String {
        let mut s = String::new();
        s.push(self.component);
        s.push(self.repetition);
        if let Some(e) = self.escape {
            s.push(e);
        }
        s.push(self.subcomponent);
        s
    }

    /// Writes `text` so that none of the separators in it is read as one.
    pub fn escape_text(&self, text: &str) -> String {
        let Some(e) = self.escape else {
            return text.to_owned();
        };
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let code = if c == self.field {
                Some('F')
            } else if c == self.component {
                Some('S')
            } else if c == self.subcomponent {
                Some('T')
            } else if c == self.repetition {
                Some('R')
            } else if c == e {
                Some('E')
            } else {
                None
            };
            match code {
                Some(code) => {
                    out.push(e);
                    out.push(code);
                    out.push(e);
                }
                None if c == '\r' || c == '\n' => out.push(' '),
                None => out.push(c),
            }
        }
        out
    }
}

/// One segment: its name and its fields as written (escapes still in).
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    /// `fields[n]` is field n (for MSH, field 1 is the field separator itself).
    fields: Vec<String>,
}

/// A parsed message.
#[derive(Debug, Clone)]
pub struct Message {
    pub separators: Separators,
    pub charset: Charset,
    pub segments: Vec<Segment>,
}

impl Message {
    /// Reads a message from its bytes: MSH first, separators from MSH-1/2, text decoded as
    /// MSH-18 says (`default` when it says nothing). Segments end with CR; LF and CR LF are
    /// accepted too.
    pub fn parse(bytes: &[u8], default: Charset) -> Result<Message, ParseError> {
        if bytes.len() < 8 || &bytes[..3] != b"MSH" {
            return err("the message does not start with an MSH segment");
        }
        let field = bytes[3];
        if !field.is_ascii_punctuation() {
            return err("MSH-1 (the field separator) is not a separator character");
        }
        let charset = Charset::named(&msh18(bytes, field), default)?;
        let text = charset.decode(bytes)?;
        let field = field as char;
        let enc: Vec<char> = text[4..].chars().take_while(|c| *c != field).collect();
        if !(3..=4).contains(&enc.len()) || enc.iter().any(|c| c.is_alphanumeric()) {
            return err("MSH-2 (the encoding characters) must be 3 or 4 separators");
        }
        let separators = Separators {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: if enc.len() == 4 { Some(enc[2]) } else { None },
            subcomponent: enc[enc.len() - 1],
        };
        let mut segments = Vec::new();
        for line in text.split(['\r', '\n']) {
            if line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(field);
            let name = parts.next().unwrap_or_default().to_owned();
            if name.len() != 3 || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return err(format!("{name:.20} is not a segment name"));
            }
            let mut fields = vec![String::new()];
            if name == "MSH" {
                fields.push(field.to_string());
            }
            fields.extend(parts.map(str::to_owned));
            segments.push(Segment { name, fields });
        }
        Ok(Message {
            separators,
            charset,
            segments,
        })
    }

    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.name == name)
    }

    /// A view of a field, for reading its parts.
    pub fn get<'a>(&'a self, seg: &'a Segment, n: usize) -> Field<'a> {
        Field {
            raw: seg.fields.get(n).map_or("", String::as_str),
            seps: &self.separators,
            charset: self.charset,
        }
    }

    /// The decoded first component of field `n` of the first `segment` (MSH-10 and the like).
    pub fn value(&self, segment: &str, n: usize) -> String {
        match self.segment(segment) {
            Some(s) if segment == "MSH" && n <= 2 => s.fields.get(n).cloned().unwrap_or_default(),
            Some(s) => self.get(s, n).first().text(1),
            None => String::new(),
        }
    }
}

/// The field value MSH-18, read before the text is decoded (the separators are ASCII).
fn msh18(bytes: &[u8], field: u8) -> String {
    let first = bytes
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    // MSH-1 is the separator itself, so MSH-n is the n-1st part after "MSH".
    let part = first.split(|b| *b == field).nth(17).unwrap_or_default();
    // Only the first component (`UNICODE UTF-8` has none; `8859/1^...` might).
    let end = part.iter().position(|b| *b == b'^').unwrap_or(part.len());
    String::from_utf8_lossy(&part[..end]).into_owned()
}

/// One field of a segment.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    seps: &'a Separators,
    charset: Charset,
}

impl<'a> Field<'a> {
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The field's repetitions (one when it does not repeat).
    pub fn repeats(&self) -> Vec<Repeat<'a>> {
        self.raw
            .split(self.seps.repetition)
            .map(|raw| Repeat {
                raw,
                seps: self.seps,
                charset: self.charset,
            })
            .collect()
    }

    pub fn first(&self) -> Repeat<'a> {
        self.repeats().into_iter().next().unwrap_or(Repeat {
            raw: "",
            seps: self.seps,
            charset: self.charset,
        })
    }
}

/// One repetition of a field: components and their sub-components.
#[derive(Debug, Clone, Copy)]
pub struct Repeat<'a> {
    raw: &'a str,
    seps: &'a Separators,
    charset: Charset,
}

impl<'a> Repeat<'a> {
    fn component_raw(&self, c: usize) -> &'a str {
        self.raw
            .split(self.seps.component)
            .nth(c.saturating_sub(1))
            .unwrap_or("")
    }

    /// Component `c` (1-based), all its sub-components, decoded (sub-component separators
    /// stay as written).
    pub fn text(&self, c: usize) -> String {
        unescape(self.component_raw(c), self.seps, self.charset)
    }

    /// Sub-component `s` of component `c` (both 1-based), decoded.
    pub fn sub(&self, c: usize, s: usize) -> String {
        let raw = self
            .component_raw(c)
            .split(self.seps.subcomponent)
            .nth(s.saturating_sub(1))
            .unwrap_or("");
        unescape(raw, self.seps, self.charset)
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// Replaces the escape sequences of HL7 v2 (2.7 section 2.7): the separators (`\F\ \S\ \T\ \R\
/// \E\`), hexadecimal data (`\Xhh..\`, bytes in the message's character set) and a line break
/// (`\.br\`). Highlighting (`\H\ \N\`) is dropped; other sequences (`\Z..\`, `\C..\`, `\M..\`)
/// are kept as written, so nothing is lost silently. An unterminated escape stays as written.
pub fn unescape(raw: &str, seps: &Separators, charset: Charset) -> String {
    let Some(e) = seps.escape else {
        return raw.to_owned();
    };
    if !raw.contains(e) {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(e) {
        out.push_str(&rest[..start]);
        let after = &rest[start + e.len_utf8()..];
        let Some(end) = after.find(e) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let seq = &after[..end];
        match seq {
            "F" => out.push(seps.field),
            "S" => out.push(seps.component),
            "T" => out.push(seps.subcomponent),
            "R" => out.push(seps.repetition),
            "E" => out.push(e),
            "H" | "N" => {}
            ".br" => out.push('\n'),
            _ if seq.starts_with('X') => match hex(&seq[1..]) {
                Some(bytes) => match charset {
                    Charset::Latin1 => out.extend(bytes.iter().map(|&b| b as char)),
                    Charset::Ascii | Charset::Utf8 => {
                        out.push_str(&String::from_utf8_lossy(&bytes))
                    }
                },
                None => {
                    out.push(e);
                    out.push_str(seq);
                    out.push(e);
                }
            },
            _ => {
                out.push(e);
                out.push_str(seq);
                out.push(e);
            }
        }
        rest = &after[end + e.len_utf8()..];
    }
    out.push_str(rest);
    out
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &[u8] = b"MSH|^~\\&|HIX|UMCU|GATEWAY|HHU|20261104120000||ADT^A31^ADT_A05|UMCU-A31-3001|P|2.5|||AL|NE||8859/1\rEVN|A31|20261104120000\rPID|1||999911168^^^NLMINBIZA^NNNLD~7099887^^^UMCU^PI||M\xfcller&van&M\xfcller^Ren\xe9e^^^^^L||19750808|F\r";

    #[test]
    fn fields_repetitions_components_and_subcomponents() {
        let m = Message::parse(ADT, Charset::Ascii).unwrap();
        assert_eq!(m.charset, Charset::Latin1);
        assert_eq!(m.value("MSH", 1), "|");
        assert_eq!(m.value("MSH", 2), "^~\\&");
        assert_eq!(m.value("MSH", 4), "UMCU");
        assert_eq!(m.value("MSH", 10), "UMCU-A31-3001");
        let msh = m.segment("MSH").unwrap();
        assert_eq!(m.get(msh, 9).first().text(2), "A31");
        let pid = m.segment("PID").unwrap();
        let ids = m.get(pid, 3).repeats();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].text(1), "999911168");
        assert_eq!(ids[0].text(4), "NLMINBIZA");
        assert_eq!(ids[1].text(5), "PI");
        let name = m.get(pid, 5).first();
        assert_eq!(name.sub(1, 1), "Müller");
        assert_eq!(name.sub(1, 2), "van");
        assert_eq!(name.text(2), "Renée");
        assert_eq!(m.get(pid, 99).first().text(1), "");
    }

    #[test]
    fn character_sets_follow_msh_18() {
        let utf8 =
            "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5||||||UNICODE UTF-8\rPID|1||1||Müller\r";
        let m = Message::parse(utf8.as_bytes(), Charset::Ascii).unwrap();
        assert_eq!(m.charset, Charset::Utf8);
        assert_eq!(
            m.get(m.segment("PID").unwrap(), 5).first().text(1),
            "Müller"
        );
        // The same bytes declared Latin-1 read as Latin-1 (two characters for the ü).
        let latin = utf8.replace("UNICODE UTF-8", "8859/1");
        let m = Message::parse(latin.as_bytes(), Charset::Ascii).unwrap();
        assert_eq!(
            m.get(m.segment("PID").unwrap(), 5).first().text(1),
            "MÃ¼ller"
        );
        // Declared ASCII, or UTF-8 that is not: refused, never guessed.
        let liar = utf8.replace("UNICODE UTF-8", "ASCII");
        assert!(Message::parse(liar.as_bytes(), Charset::Ascii).is_err());
        let raw = [
            b"MSH|^~\\&|A|B|C|D|1||ADT^A08|1|P|2.5||||||UNICODE UTF-8\rPID|1||1||M\xfc\r"
                .as_slice(),
        ]
        .concat();
        assert!(Message::parse(&raw, Charset::Ascii).is_err());
        // Unknown character sets are named.
        let other = utf8.replace("UNICODE UTF-8", "ISO IR87");
        let e = Message::parse(other.as_bytes(), Charset::Ascii).unwrap_err();
        assert!(e.0.contains("ISO IR87"), "{e}");
        // No MSH-18: the configured default.
        let none = "MSH|^~\\&|A|B|C|D|1||ADT^A08|1|P|2.5\rPID|1||1||M\u{fc}ller\r";
        let latin1: Vec<u8> = none.chars().map(|c| c as u8).collect();
        let m = Message::parse(&latin1, Charset::Latin1).unwrap();
        assert_eq!(
            m.get(m.segment("PID").unwrap(), 5).first().text(1),
            "Müller"
        );
    }

    #[test]
    fn escapes_are_decoded_with_the_declared_separators() {
        let s = Separators::default();
        assert_eq!(
            unescape(r"A\F\B\S\C\T\D\R\E\E\F", &s, Charset::Utf8),
            "A|B^C&D~E\\F"
        );
        assert_eq!(unescape(r"Line\.br\two", &s, Charset::Utf8), "Line\ntwo");
        assert_eq!(unescape(r"\H\bold\N\", &s, Charset::Utf8), "bold");
        // Hexadecimal data in the message's character set.
        assert_eq!(unescape(r"M\XC3BC\ller", &s, Charset::Utf8), "Müller");
        assert_eq!(unescape(r"M\XFC\ller", &s, Charset::Latin1), "Müller");
        // Non-ASCII text before an escape (where hl7-parser 0.3 slices wrongly).
        assert_eq!(unescape(r"Müller \T\ Zn", &s, Charset::Utf8), "Müller & Zn");
        // Unknown and unterminated sequences stay as written.
        assert_eq!(unescape(r"\Zfoo\ x", &s, Charset::Utf8), r"\Zfoo\ x");
        assert_eq!(unescape(r"a\F", &s, Charset::Utf8), r"a\F");
        // Other separators, declared in MSH-2: '#' escapes.
        let m = Message::parse(
            b"MSH|*~#&|A|B|C|D|1||ADT*A08|1|P|2.5\rPID|1||1||x#S#y*z\r",
            Charset::Ascii,
        )
        .unwrap();
        let name = m.get(m.segment("PID").unwrap(), 5).first();
        assert_eq!(name.text(1), "x*y");
        assert_eq!(name.text(2), "z");
        assert_eq!(m.separators.encoding_characters(), "*~#&");
        assert_eq!(s.escape_text("a|b^c"), r"a\F\b\S\c");
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            b"".as_slice(),
            b"PID|1",
            b"MSH",
            b"MSHa^~\\&|x",
            b"MSH|^|x|y",
            b"MSH|^~\\&|A\rP\xffD|1\r",
        ] {
            assert!(Message::parse(bad, Charset::Latin1).is_err(), "{bad:?}");
        }
    }
}
