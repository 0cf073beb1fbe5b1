//! A condition checked against the shape of an event before any event
//! comes: it may name only `event` (and the variables of its own macros),
//! only the fields an event has (`minion`, `tag`, `seq`, `time`, `cause`,
//! `data`), and it must give true or false. Types are followed where they
//! are cheap to know (the event's own fields, literals, operators); event
//! data is dynamic, so `event.data.*` is checked when evaluated, where a
//! failure is counted and logged per rule.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};

use super::condition::ConditionError;

/// What an expression gives, as far as the check can tell.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Bool,
    /// A known type that is not boolean: its name.
    Not(&'static str),
    /// A value read from the event, type unknown until evaluated: its path.
    Field(String),
    /// `event.data`: a map of whatever the beacon sent.
    Data,
    /// Cannot tell cheaply (a macro's variable, a function's result).
    Unknown,
}

/// The fields of `event`, with the type each gives.
const EVENT_FIELDS: [(&str, Ty); 6] = [
    ("minion", Ty::Not("string")),
    ("tag", Ty::Not("string")),
    ("seq", Ty::Not("int")),
    ("time", Ty::Not("int")),
    ("cause", Ty::Not("int")),
    ("data", Ty::Data),
];

/// Names CEL itself gives meaning to (type names, for `type(x) == int`).
const TYPE_NAMES: [&str; 11] = [
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// Checks a compiled condition against the event's shape.
pub(super) fn check(expr: &IdedExpr) -> Result<(), ConditionError> {
    match walk(expr, &mut Vec::new())? {
        Ty::Bool | Ty::Unknown => Ok(()),
        Ty::Data => Err(ConditionError::NotBoolean {
            gives: "the map `event.data`".into(),
            path: None,
        }),
        Ty::Not(gives) => Err(ConditionError::NotBoolean {
            gives: format!("a {gives}"),
            path: None,
        }),
        Ty::Field(path) => Err(ConditionError::NotBoolean {
            gives: format!("the value of `{path}`"),
            path: Some(path),
        }),
    }
}

fn walk(e: &IdedExpr, scope: &mut Vec<String>) -> Result<Ty, ConditionError> {
    Ok(match &e.expr {
        Expr::Unspecified => Ty::Unknown,
        Expr::Literal(v) => match v {
            LiteralValue::Boolean(_) => Ty::Bool,
            LiteralValue::String(_) => Ty::Not("string"),
            LiteralValue::Int(_) | LiteralValue::UInt(_) => Ty::Not("int"),
            LiteralValue::Double(_) => Ty::Not("double"),
            LiteralValue::Bytes(_) => Ty::Not("bytes"),
            LiteralValue::Null => Ty::Not("null"),
        },
        Expr::Ident(name) => {
            if scope.iter().any(|s| s == name) || TYPE_NAMES.contains(&name.as_str()) {
                Ty::Unknown
            } else if name == "event" {
                Ty::Not("map (the whole event)")
            } else {
                return Err(ConditionError::UnknownName(name.clone()));
            }
        }
        Expr::Select(s) => {
            let event = matches!(&s.operand.expr, Expr::Ident(n) if n == "event")
                && !scope.iter().any(|v| v == "event");
            if event {
                let Some((_, ty)) = EVENT_FIELDS.iter().find(|(f, _)| *f == s.field) else {
                    return Err(ConditionError::UnknownField(s.field.clone()));
                };
                if s.test { Ty::Bool } else { ty.clone() }
            } else {
                let inner = walk(&s.operand, scope)?;
                if s.test {
                    Ty::Bool
                } else {
                    match inner {
                        Ty::Field(p) => Ty::Field(format!("{p}.{}", s.field)),
                        Ty::Data => Ty::Field(format!("event.data.{}", s.field)),
                        _ => Ty::Unknown,
                    }
                }
            }
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, scope)?;
            }
            let args = c
                .args
                .iter()
                .map(|a| walk(a, scope))
                .collect::<Result<Vec<_>, _>>()?;
            match c.func_name.as_str() {
                operators::LOGICAL_AND
                | operators::LOGICAL_OR
                | operators::LOGICAL_NOT
                | operators::EQUALS
                | operators::NOT_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::IN
                | operators::NOT_STRICTLY_FALSE
                | operators::HAS
                | "matches"
                | "startsWith"
                | "endsWith"
                | "contains" => Ty::Bool,
                operators::ADD
                | operators::SUBSTRACT
                | operators::MULTIPLY
                | operators::DIVIDE
                | operators::MODULO
                | operators::NEGATE
                | "size"
                | "int"
                | "uint"
                | "double" => Ty::Not("number"),
                "string" => Ty::Not("string"),
                operators::CONDITIONAL => match (args.get(1), args.get(2)) {
                    (Some(Ty::Not(a)), Some(Ty::Not(_))) => Ty::Not(a),
                    (Some(Ty::Bool), _) | (_, Some(Ty::Bool)) => Ty::Bool,
                    _ => Ty::Unknown,
                },
                operators::INDEX => match args.first() {
                    Some(Ty::Field(p)) => Ty::Field(format!("{p}[...]")),
                    Some(Ty::Data) => Ty::Field("event.data[...]".into()),
                    _ => Ty::Unknown,
                },
                _ => Ty::Unknown,
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, scope)?;
            // `all` and `exists` start from a boolean, `map` and `filter`
            // from a list: what it gives is what it accumulates.
            let accumulates = walk(&c.accu_init, scope)?;
            let pushed = 2 + usize::from(c.iter_var2.is_some());
            scope.push(c.iter_var.clone());
            scope.push(c.accu_var.clone());
            if let Some(v) = &c.iter_var2 {
                scope.push(v.clone());
            }
            let inner = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_for_each(|x| walk(x, scope).map(drop));
            scope.truncate(scope.len() - pushed);
            inner?;
            match accumulates {
                Ty::Bool => Ty::Bool,
                Ty::Not(t) => Ty::Not(t),
                _ => Ty::Unknown,
            }
        }
        Expr::List(l) => {
            for x in &l.elements {
                walk(x, scope)?;
            }
            Ty::Not("list")
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, scope)?;
                    walk(&me.value, scope)?;
                }
            }
            Ty::Not("map")
        }
        Expr::Struct(_) => Ty::Not("message"),
    })
}
