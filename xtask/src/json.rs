//! Just enough JSON to read the simulated cluster's objects for the cluster demo's views
//! (xtask stays std only). Numbers keep their text, which is all a view prints.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

static NULL: Json = Json::Null;

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i == p.s.len() {
            Ok(v)
        } else {
            Err(format!("JSON: trailing bytes at {}", p.i))
        }
    }

    /// The member `key` of an object, or element `key` of an array; Null when absent.
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m.get(key).unwrap_or(&NULL),
            Json::Arr(a) => key
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    /// The value at a dotted path (`status.port`, `spec.ports.0.port`); Null when absent.
    pub fn at(&self, path: &str) -> &Json {
        path.split('.').fold(self, Json::get)
    }

    /// The elements of an array (none for anything else).
    pub fn items(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }

    /// As a table cell: strings without quotes, `<none>` for null as kubectl prints it, arrays
    /// and objects as compact JSON.
    pub fn text(&self) -> String {
        match self {
            Json::Null => "<none>".into(),
            Json::Bool(b) => b.to_string(),
            Json::Num(n) => n.clone(),
            Json::Str(s) => s.clone(),
            Json::Arr(_) | Json::Obj(_) => self.compact(),
        }
    }

    /// Compact JSON text (strings escaped as Rust does: enough to read).
    fn compact(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Str(s) => format!("{s:?}"),
            Json::Arr(a) => format!(
                "[{}]",
                a.iter().map(Json::compact).collect::<Vec<_>>().join(",")
            ),
            Json::Obj(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{k:?}:{}", v.compact()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => self.text(),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("JSON: expected {what} at byte {}", self.i))
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        let hit = self.s.get(self.i) == Some(&b);
        self.i += usize::from(hit);
        hit
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        let rest = &self.s[self.i..];
        for (word, v) in [
            (&b"null"[..], Json::Null),
            (b"true", Json::Bool(true)),
            (b"false", Json::Bool(false)),
        ] {
            if rest.starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        match rest.first() {
            Some(b'"') => self.string().map(Json::Str),
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                if !self.eat(b']') {
                    loop {
                        a.push(self.value()?);
                        if self.eat(b']') {
                            break;
                        }
                        if !self.eat(b',') {
                            return self.err("`,` or `]`");
                        }
                    }
                }
                Ok(Json::Arr(a))
            }
            Some(b'{') => {
                self.i += 1;
                let mut m = BTreeMap::new();
                if !self.eat(b'}') {
                    loop {
                        self.ws();
                        let k = self.string()?;
                        if !self.eat(b':') {
                            return self.err("`:`");
                        }
                        m.insert(k, self.value()?);
                        if self.eat(b'}') {
                            break;
                        }
                        if !self.eat(b',') {
                            return self.err("`,` or `}`");
                        }
                    }
                }
                Ok(Json::Obj(m))
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let n = rest
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                    .count();
                self.i += n;
                Ok(Json::Num(String::from_utf8_lossy(&rest[..n]).into_owned()))
            }
            _ => self.err("a value"),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.s.get(self.i..self.i + 4).unwrap_or_default();
        let v = std::str::from_utf8(h)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        self.i += 4;
        v.map_or_else(|| self.err("4 hex digits"), Ok)
    }

    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("a string");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("the closing `\"`");
            };
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("an escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let hi = self.hex4()?;
                            // A surrogate pair is two escapes; a lone half reads as U+FFFD.
                            let code = if (0xD800..0xDC00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        other => other as char,
                    };
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn reads_an_object_and_paths() {
        let v = Json::parse(
            r#" {"metadata":{"name":"vm-1"},"status":{"port":6230,"ok":true,"x":null},
                "spec":{"ports":[{"port":623,"protocol":"UDP"}]},"s":"a\"b\u00e9\ud83d\ude00\n"} "#,
        )
        .unwrap();
        assert_eq!(v.at("metadata.name").text(), "vm-1");
        assert_eq!(v.at("status.port").text(), "6230");
        assert_eq!(v.at("status.ok"), &Json::Bool(true));
        assert_eq!(v.at("status.x").text(), "<none>");
        assert_eq!(v.at("status.missing.deeper"), &Json::Null);
        assert_eq!(v.at("spec.ports.0.protocol").text(), "UDP");
        assert_eq!(v.at("spec.ports").items().len(), 1);
        assert_eq!(v.at("spec").get("ports").get("0").get("port").text(), "623");
        assert_eq!(v.at("s").text(), "a\"bé😀\n");
        assert_eq!(
            Json::parse("[-1.5e3, []]").unwrap().at("0").text(),
            "-1.5e3"
        );
    }

    #[test]
    fn rejects_broken_input() {
        for bad in ["", "{", "[1,", "{\"a\" 1}", "\"open", "[1] x", "\"\\u12\""] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
    }
}
