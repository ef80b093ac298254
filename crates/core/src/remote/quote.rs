//! Quoting for the remote shells: one tested function per shell family.

/// Quotes `text` as one word for any POSIX-family shell: sh, dash, bash, zsh and fish.
///
/// Single quotes keep everything literal in sh; fish however treats `\\` and `\'` as escapes
/// inside single quotes, so backslashes and quotes are placed *outside* the quotes, escaped by a
/// backslash, which every one of these shells reads as the literal character.
pub fn quote_posix(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for ch in text.chars() {
        match ch {
            '\'' => quoted.push_str("'\\''"),
            '\\' => quoted.push_str("'\\\\'"),
            _ => quoted.push(ch),
        }
    }
    quoted.push('\'');
    quoted
}

/// Quotes `text` as a PowerShell single-quoted string literal. PowerShell also closes a
/// single-quoted string on the typographic quotes U+2018..U+201B, so each is doubled like `'`.
pub fn quote_powershell(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for ch in text.chars() {
        if matches!(ch, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            quoted.push(ch);
        }
        quoted.push(ch);
    }
    quoted.push('\'');
    quoted
}
