//! Human rendering of RPC results for `nvmf-tgt rpc` (`--json` prints the
//! raw result instead): arrays of flat objects become aligned tables,
//! objects become indented `key: value` lines.

use serde_json::Value;

/// Renders a result for a terminal.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    render_into(&mut out, v, 0);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(scalar).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

fn is_flat(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().all(|x| match x {
            Value::Object(_) => false,
            Value::Array(a) => a.iter().all(|y| !y.is_object() && !y.is_array()),
            _ => true,
        }),
        _ => false,
    }
}

fn render_into(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Array(items) if items.is_empty() => out.push_str(&format!("{pad}(none)\n")),
        Value::Array(items) if items.iter().all(is_flat) => table(out, items, &pad),
        Value::Array(items) => {
            for (i, it) in items.iter().enumerate() {
                out.push_str(&format!("{pad}[{i}]\n"));
                render_into(out, it, indent + 2);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::Object(_) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render_into(out, x, indent + 2);
                    }
                    Value::Array(a) if a.iter().any(|y| y.is_object() || y.is_array()) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render_into(out, x, indent + 2);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(x))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn table(out: &mut String, rows: &[Value], pad: &str) {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        if let Value::Object(m) = r {
            for k in m.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| scalar(r.get(c).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| {
        let mut s = pad.to_owned();
        for (i, v) in vals.iter().enumerate() {
            if i + 1 == vals.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    out.push_str(&line(&cols));
    for r in &cells {
        out.push_str(&line(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_and_trees() {
        let t = render(&json!([{"name":"ram0","blocks":8},{"name":"null0","blocks":16}]));
        assert_eq!(t, "name   blocks\nram0   8\nnull0  16\n");
        let o = render(&json!({"nsid":1,"latency":{"p50":10}}));
        assert_eq!(o, "nsid: 1\nlatency:\n  p50: 10\n");
        assert_eq!(render(&json!([])), "(none)\n");
    }
}
