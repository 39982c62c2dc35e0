//! Quoting for POSIX shells.

/// Quotes `s` as one word for a POSIX shell: single quotes around it, each
/// single quote inside written as `'\''`. Everything else, `$`, backticks,
/// `;`, spaces, newlines and non-ASCII included, reaches the program as it is.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quotes each word and joins them with spaces.
pub fn quote_all<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words.into_iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::quote;

    fn check(input: &str, expected: &str) {
        assert_eq!(quote(input), expected, "quoting {input:?}");
    }

    #[test]
    fn quotes() {
        check("", "''");
        check("plain", "'plain'");
        check("it's", "'it'\\''s'");
        check("$(rm -rf /); `x` \"y\"", "'$(rm -rf /); `x` \"y\"'");
        check("a\nb", "'a\nb'");
        check("ünï", "'ünï'");
    }
}
