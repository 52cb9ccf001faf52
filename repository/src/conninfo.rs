//! Taking the password out of a libpq connection string, so that it can travel in a child's
//! environment instead of its arguments (which every local user can read in /proc).

/// `conninfo` without its password, and the password. Both libpq forms are understood: keyword
/// and value pairs (`host=db password='s e'`) and URIs (`postgresql://u:pw@db/x?password=pw`).
/// A database name that is itself a connection string (libpq may expand one) is refused: a
/// password inside it would stay in the arguments.
pub(crate) fn take_password(conninfo: &str) -> Result<(String, Option<String>), String> {
    let trimmed = conninfo.trim_start();
    if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        let scheme = &trimmed[..trimmed.len() - rest.len()];
        return take_from_uri(scheme, rest);
    }
    let pairs = parse_pairs(conninfo)?;
    let mut password = None;
    let mut kept = Vec::new();
    for (key, value) in pairs {
        if key == "dbname" {
            check_dbname(&value)?;
        }
        if key == "password" {
            password = Some(value);
        } else {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok((kept.join(" "), password))
}

/// What libpq takes for a connection string rather than a name (`recognized_connection_string`).
fn check_dbname(dbname: &str) -> Result<(), String> {
    if dbname.contains('=')
        || dbname.starts_with("postgresql://")
        || dbname.starts_with("postgres://")
    {
        return Err(
            "the database name is itself a connection string: give its settings in the \
             connection string directly"
                .to_string(),
        );
    }
    Ok(())
}

fn take_from_uri(scheme: &str, rest: &str) -> Result<(String, Option<String>), String> {
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let path = tail.split('?').next().unwrap_or_default();
    check_dbname(&percent_decode(path.strip_prefix('/').unwrap_or(path)))?;
    let mut password = None;
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, pw)) => {
                password = Some(percent_decode(pw));
                format!("{user}@{hosts}")
            }
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<&str> = query
                .split('&')
                .filter(|p| match p.split_once('=') {
                    Some((k, v)) if percent_decode(k) == "password" => {
                        password = Some(percent_decode(v));
                        false
                    }
                    _ => true,
                })
                .collect();
            for p in &params {
                if let Some((k, v)) = p.split_once('=')
                    && percent_decode(k) == "dbname"
                {
                    check_dbname(&percent_decode(v))?;
                }
            }
            if params.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", params.join("&"))
            }
        }
        None => tail.to_string(),
    };
    Ok((format!("{scheme}{authority}{tail}"), password))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key = value` pairs as libpq reads them: values quoted with `'` or bare, `\` escaping the
/// next character in both.
fn parse_pairs(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let mut chars = conninfo.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "the connection string has {key:?} without \"=value\""
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of {key:?} lacks its closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::take_password;

    #[test]
    fn keyword_value_strings() {
        let (rest, pw) = take_password("host=db port=5432 password='se cr\\'et' user=u").unwrap();
        assert_eq!(pw.as_deref(), Some("se cr'et"));
        assert_eq!(rest, "host='db' port='5432' user='u'");
        let (rest, pw) = take_password("host = db password = plain dbname=x").unwrap();
        assert_eq!(pw.as_deref(), Some("plain"));
        assert!(!rest.contains("plain"), "{rest}");
        let (rest, pw) = take_password("host=/tmp dbname='a b'").unwrap();
        assert_eq!(pw, None);
        assert_eq!(rest, "host='/tmp' dbname='a b'");
        assert!(take_password("host=db password='open").is_err());
        assert!(take_password("host").is_err());
    }

    #[test]
    fn uris() {
        let (rest, pw) =
            take_password("postgresql://u:p%40ss@db:5432,db2/app?sslmode=require").unwrap();
        assert_eq!(pw.as_deref(), Some("p@ss"));
        assert_eq!(rest, "postgresql://u@db:5432,db2/app?sslmode=require");
        let (rest, pw) =
            take_password("postgres://db/app?password=x%20y&application_name=ir").unwrap();
        assert_eq!(pw.as_deref(), Some("x y"));
        assert_eq!(rest, "postgres://db/app?application_name=ir");
        let (rest, pw) = take_password("postgresql://u@db?password=s").unwrap();
        assert_eq!(pw.as_deref(), Some("s"));
        assert_eq!(rest, "postgresql://u@db");
        let (rest, pw) = take_password("postgresql:///app?host=/tmp").unwrap();
        assert_eq!((rest.as_str(), pw), ("postgresql:///app?host=/tmp", None));
    }

    /// A password inside a database name that is a connection string would stay in the
    /// arguments: refused in every place a database name can be given.
    #[test]
    fn a_dbname_that_is_a_connection_string_is_refused() {
        for conninfo in [
            "host=db dbname='host=db password=secret'",
            "dbname=postgresql://u:secret@db/app",
            "postgresql://db/host%3Ddb%20password%3Dsecret",
            "postgresql://db/app?dbname=password%3Dsecret",
            "postgres:///?dbname=postgresql://u:secret@db",
        ] {
            let err = take_password(conninfo).unwrap_err();
            assert!(err.contains("connection string"), "{conninfo}: {err}");
        }
        let (rest, _) = take_password("dbname=app password=x").unwrap();
        assert_eq!(rest, "dbname='app'");
        assert!(take_password("postgresql://db/app?dbname=other").is_ok());
    }
}
