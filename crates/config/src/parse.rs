//! The `rabbitmq.conf` syntax (cuttlefish's sysctl-like format), without any knowledge of keys.
//!
//! ```text
//! # a comment
//! listeners.tcp.default = 5672          # trailing comments are allowed
//! default_pass = 'p#ss word'            # single quotes keep '#' and spaces
//! setting\.with\.dots.key = value       # "\." is a literal dot inside a key segment
//! include /etc/warren/conf.d/*.conf
//! ```
//!
//! Follows cuttlefish's grammar (`conf_parse.peg`): a key is dot-separated words of
//! `[A-Za-z0-9_-]`, an unquoted value runs to the end of the line or to a `#`, a single-quoted
//! value is taken verbatim. Double-quoted values, which cuttlefish does not have, are accepted
//! too and unquoted, since operators write them.

use std::path::{Path, PathBuf};

use crate::ConfigError;

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key, dots between segments, escaped dots unescaped inside segments.
    pub key: Vec<String>,
    /// The value, unquoted and trimmed.
    pub value: String,
    /// Where the setting came from, for error messages.
    pub origin: Origin,
}

impl Setting {
    /// The key as written (segments joined by dots).
    pub fn key_text(&self) -> String {
        self.key.join(".")
    }
}

/// A file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, or a description such as `<string>`.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Parses configuration text. `include` lines are resolved relative to `base_dir`.
pub(crate) fn parse(text: &str, file: &Path, depth: usize) -> Result<Vec<Setting>, ConfigError> {
    let mut settings = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            line: index + 1,
        };
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(target) = line
            .strip_prefix("include")
            .filter(|rest| rest.starts_with([' ', '\t']))
        {
            let target = strip_comment(target).trim();
            settings.extend(include(target, file, depth, &origin)?);
            continue;
        }
        settings.push(parse_setting(line, origin)?);
    }
    Ok(settings)
}

fn syntax(origin: &Origin, message: impl Into<String>) -> ConfigError {
    ConfigError::Syntax {
        origin: origin.clone(),
        message: message.into(),
    }
}

fn parse_setting(line: &str, origin: Origin) -> Result<Setting, ConfigError> {
    let Some((key_text, rest)) = line.split_once('=') else {
        return Err(syntax(
            &origin,
            format!("expected 'key = value', found '{line}'"),
        ));
    };
    let key = parse_key(key_text.trim(), &origin)?;
    let rest = rest.trim_start();
    let value = if let Some(quoted) = rest.strip_prefix('\'') {
        let Some((value, after)) = quoted.split_once('\'') else {
            return Err(syntax(&origin, "single-quoted value has no closing quote"));
        };
        check_after_quote(after, &origin)?;
        value.to_string()
    } else if let Some(quoted) = rest.strip_prefix('"') {
        let Some((value, after)) = quoted.split_once('"') else {
            return Err(syntax(&origin, "double-quoted value has no closing quote"));
        };
        check_after_quote(after, &origin)?;
        value.to_string()
    } else {
        strip_comment(rest).trim_end().to_string()
    };
    if value.is_empty() {
        return Err(syntax(
            &origin,
            format!("key '{}' has no value", key.join(".")),
        ));
    }
    Ok(Setting { key, value, origin })
}

fn check_after_quote(after: &str, origin: &Origin) -> Result<(), ConfigError> {
    let after = after.trim_start();
    if after.is_empty() || after.starts_with('#') {
        Ok(())
    } else {
        Err(syntax(
            origin,
            format!("unexpected text '{after}' after a quoted value"),
        ))
    }
}

fn strip_comment(text: &str) -> &str {
    text.split_once('#').map_or(text, |(before, _)| before)
}

fn parse_key(text: &str, origin: &Origin) -> Result<Vec<String>, ConfigError> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                chars.next();
                current.push('.');
            }
            '.' => {
                if current.is_empty() {
                    return Err(syntax(origin, format!("key '{text}' has an empty segment")));
                }
                segments.push(std::mem::take(&mut current));
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => current.push(c),
            c => {
                return Err(syntax(
                    origin,
                    format!(
                        "key '{text}' contains '{c}'; keys are dot-separated words of letters, digits, '_' and '-'"
                    ),
                ));
            }
        }
    }
    if current.is_empty() {
        return Err(syntax(
            origin,
            format!("key '{text}' is empty or ends with a dot"),
        ));
    }
    segments.push(current);
    Ok(segments)
}

const MAX_INCLUDE_DEPTH: usize = 8;

fn include(
    target: &str,
    from: &Path,
    depth: usize,
    origin: &Origin,
) -> Result<Vec<Setting>, ConfigError> {
    if depth >= MAX_INCLUDE_DEPTH {
        return Err(syntax(
            origin,
            format!("includes nested deeper than {MAX_INCLUDE_DEPTH} levels"),
        ));
    }
    if target.is_empty() {
        return Err(syntax(
            origin,
            "include needs a file or a directory pattern",
        ));
    }
    let base = from.parent().unwrap_or(Path::new("."));
    let path = base.join(target);
    let files = match path.file_name().and_then(|name| name.to_str()) {
        Some(pattern) if pattern.contains('*') => {
            let dir = path.parent().unwrap_or(Path::new("."));
            let (prefix, suffix) = pattern.split_once('*').unwrap_or((pattern, ""));
            let entries = std::fs::read_dir(dir).map_err(|error| ConfigError::Read {
                file: dir.to_path_buf(),
                message: error.to_string(),
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|file| {
                    file.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| {
                            name.starts_with(prefix)
                                && name.ends_with(suffix)
                                && name.len() >= prefix.len() + suffix.len()
                        })
                })
                .collect();
            files.sort();
            files
        }
        _ => vec![path],
    };
    let mut settings = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|error| ConfigError::Read {
            file: file.clone(),
            message: error.to_string(),
        })?;
        settings.extend(parse(&text, &file, depth + 1)?);
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Setting>, ConfigError> {
        parse(text, Path::new("test.conf"), 0)
    }

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse_str(text)
            .unwrap()
            .into_iter()
            .map(|setting| (setting.key_text(), setting.value))
            .collect()
    }

    #[test]
    fn settings_comments_and_quotes() {
        let text = "# comment\n\n  listeners.tcp.default = 5672  \n\
                    default_pass = 'p#ss word' # trailing\n\
                    default_user = \"admin\"\n\
                    log.console.level = debug # trailing comment\n\
                    setting\\.0.x = thing\r\n";
        assert_eq!(
            pairs(text),
            vec![
                ("listeners.tcp.default".to_string(), "5672".to_string()),
                ("default_pass".to_string(), "p#ss word".to_string()),
                ("default_user".to_string(), "admin".to_string()),
                ("log.console.level".to_string(), "debug".to_string()),
                ("setting.0.x".to_string(), "thing".to_string()),
            ]
        );
        let settings = parse_str("\n\nheartbeat = 10\n").unwrap();
        assert_eq!(settings[0].origin.line, 3);
        assert_eq!(settings[0].key, vec!["heartbeat"]);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for bad in [
            "no equals sign",
            "key = ",
            "bad key = 1",
            "key.. = 1",
            "key = 'unterminated",
            "key = 'quoted' extra",
        ] {
            let error = parse_str(&format!("# first\n{bad}\n")).unwrap_err();
            assert!(error.to_string().starts_with("test.conf:2:"), "{error}");
        }
    }

    #[test]
    fn includes_read_files_and_patterns() {
        let dir =
            std::env::temp_dir().join(format!("warren-config-include-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d/10-a.conf"), "heartbeat = 5\n").unwrap();
        std::fs::write(dir.join("conf.d/20-b.conf"), "channel_max = 9\n").unwrap();
        std::fs::write(dir.join("conf.d/skip.txt"), "frame_max = 1\n").unwrap();
        let main = dir.join("warren.conf");
        let settings = parse("include conf.d/*.conf\ndefault_user = x\n", &main, 0).unwrap();
        let keys: Vec<String> = settings.iter().map(Setting::key_text).collect();
        assert_eq!(keys, ["heartbeat", "channel_max", "default_user"]);
        assert_eq!(settings[0].origin.file, dir.join("conf.d/10-a.conf"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
