//! Quoting for the shell: the one function that turns a value into one POSIX shell word. Rendered
//! scripts (the `sh` template filter), the sbatch command lines `submit --dry-run` prints and the
//! Slurm commands shown in messages all quote through [`quote`].

/// Bytes a word may hold and still stand unquoted: ASCII letters and digits and `-_=,.:/%@+`.
/// Nothing the shell expands (`$`, `` ` ``, `~`, `*`, `?`, `[`, `]`, `{`, `}`), splits on
/// (whitespace, `;`, `&`, `|`, `<`, `>`, `(`, `)`) or reads as quoting (`'`, `"`, `\`).
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_=,.:/%@+".contains(&b)
}

/// `s` as one shell word: unchanged when every byte is plain, else in single quotes, with each `'`
/// written as `'\''`. Inside single quotes nothing is special, so newlines and non-ASCII text stay
/// as they are; the empty string is `''`.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(is_plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn plain_words_stay_as_they_are() {
        for plain in [
            "/runs/a-b_c.d",
            "--array=0-5%2",
            "--constraint=a,b",
            "user@host:/x",
            "a+b",
            "0",
        ] {
            assert_eq!(quote(plain), plain);
        }
    }

    #[test]
    fn everything_else_is_single_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("\tx"), "'\tx'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("'"), r"''\'''");
        assert_eq!(quote("\"x\""), "'\"x\"'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("$(touch x)"), "'$(touch x)'");
        assert_eq!(quote("`id`"), "'`id`'");
        assert_eq!(quote("a\nb"), "'a\nb'");
        assert_eq!(quote("a\\b"), "'a\\b'");
        assert_eq!(quote("12_[1-3]"), "'12_[1-3]'");
        assert_eq!(quote("~/x"), "'~/x'");
        assert_eq!(quote("*.out"), "'*.out'");
        assert_eq!(quote("a;b"), "'a;b'");
        assert_eq!(quote("café"), "'café'");
        assert_eq!(quote("日本"), "'日本'");
    }

    /// What bash makes of a quoted word is the value itself, whatever it holds.
    #[test]
    fn bash_reads_every_quoted_word_back_as_the_value() {
        let values = [
            "",
            "plain",
            "a b",
            "it's",
            "''",
            "$(echo pwned)",
            "`echo pwned`",
            "$HOME",
            "a\nb\n",
            "tab\there",
            "back\\slash",
            "[ab]*?",
            "café ☕",
            "!x",
        ];
        let script: String = values
            .iter()
            .map(|v| format!("printf '%s\\0' {}\n", quote(v)))
            .collect();
        let Ok(out) = std::process::Command::new("bash").arg("-c").arg(&script).output() else {
            return; // no bash here: the other tests still pin the text
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<String> = out
            .stdout
            .split(|&b| b == 0)
            .map(|w| String::from_utf8(w.to_vec()).unwrap())
            .collect();
        let mut want: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        want.push(String::new()); // after the last NUL
        assert_eq!(got, want);
    }
}
