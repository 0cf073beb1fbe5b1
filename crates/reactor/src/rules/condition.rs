//! Conditions (`when`): CEL compiled with bounds on what its parser is
//! given, and evaluated over an event handed to CEL as its own values.

use std::collections::HashMap;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
};
use cel::common::value::Val;
use tend_proto::v1::Event;

/// A `when` condition that does not compile.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConditionError {
    #[error("the condition is {0} bytes; at most {MAX_CONDITION_LEN}")]
    TooLong(usize),
    #[error(
        "the condition nests deeper than {MAX_CONDITION_NESTING} (brackets, or `!`/`-` in a row)"
    )]
    TooDeep,
    #[error("{0}")]
    Syntax(cel::ParseErrors),
    #[error("cannot start the thread that compiles it: {0}")]
    Thread(std::io::Error),
    #[error("the condition parser failed")]
    ParserFailed,
    #[error(
        "unknown name `{0}`: a condition sees `event` (event.minion, event.tag, event.seq, \
         event.time, event.cause, event.data.<field>)"
    )]
    UnknownName(String),
    #[error(
        "`event.{0}`: an event has minion, tag, seq, time, cause and data (what the \
         beacon sent is under event.data)"
    )]
    UnknownField(String),
    #[error("the condition gives {gives}, not true or false")]
    NotBoolean { gives: String, path: Option<String> },
}

impl ConditionError {
    /// What to write instead, where the message alone may not say.
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            ConditionError::UnknownName(n) if n.starts_with("ev") || n.ends_with("nt") => {
                Some(format!("did you mean `event` for `{n}`?"))
            }
            ConditionError::NotBoolean {
                path: Some(path), ..
            } => Some(format!(
                "compare it: `{path} == \"...\"`, or `{path} == true` for a flag"
            )),
            ConditionError::NotBoolean { .. } => {
                Some("compare it with ==, !=, <, or test it with has(...)".into())
            }
            _ => None,
        }
    }
}

thread_local! {
    /// CEL's standard library, built once per thread: building it is most
    /// of the cost of a fresh context.
    static CEL_ROOT: cel::Context<'static> = cel::Context::default();
}

/// Runs `f` with a CEL context holding `event`: `event.minion`,
/// `event.tag`, `event.seq`, `event.time` (microseconds), `event.cause`,
/// and `event.data.*`.
pub(super) fn with_context<T>(event: &Event, f: impl FnOnce(&cel::Context) -> T) -> T {
    CEL_ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        ctx.add_variable_as_val("event", event_val(event));
        f(&ctx)
    })
}

// The event is handed to CEL as its own value types, built directly: going
// through `cel::Value` converts every map twice, which made conditions ten
// times dearer than evaluating them.
fn event_val(event: &Event) -> Box<dyn Val> {
    let data: Box<dyn Val> = if event.data.is_empty() {
        Box::new(CelMap::from(HashMap::new()))
    } else {
        match serde_json::from_slice::<serde_json::Value>(&event.data) {
            Ok(v) => json_val(v),
            Err(_) => Box::new(CelNull),
        }
    };
    let mut doc: HashMap<CelMapKey, Box<dyn Val>> = HashMap::with_capacity(6);
    doc.insert(
        "minion".into(),
        Box::new(CelString::from(event.minion.as_str())),
    );
    doc.insert("tag".into(), Box::new(CelString::from(event.tag.as_str())));
    doc.insert("seq".into(), Box::new(CelInt::from(event.seq as i64)));
    doc.insert("time".into(), Box::new(CelInt::from(event.time_us)));
    doc.insert("cause".into(), Box::new(CelInt::from(event.cause as i64)));
    doc.insert("data".into(), data);
    Box::new(CelMap::from(doc))
}

fn json_val(v: serde_json::Value) -> Box<dyn Val> {
    use serde_json::Value as J;
    match v {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(b)),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(f)) => Box::new(CelDouble::from(f)),
            _ => Box::new(CelNull),
        },
        J::String(s) => Box::new(CelString::from(s)),
        J::Array(a) => Box::new(CelList::from(
            a.into_iter().map(json_val).collect::<Vec<_>>(),
        )),
        J::Object(o) => Box::new(CelMap::from(
            o.into_iter()
                .map(|(k, v)| (CelMapKey::from(k), json_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// How deep a condition may nest brackets, and how many prefix operators
/// (`!`, `-`) may stand in a row. The `cel` crate's parser recurses for
/// each, with large frames: twelve nested parentheses overflowed a 2 MiB
/// thread in a debug build (found by fuzzing the rules files). Real
/// conditions nest two or three deep.
const MAX_CONDITION_NESTING: usize = 8;
/// Longest condition accepted, in bytes.
const MAX_CONDITION_LEN: usize = 4096;
/// The stack the parser gets: far more than the nesting allowed needs, so
/// no condition can overflow the thread that loads the rules, whatever its
/// own stack (the reload runs on a runtime thread).
const COMPILE_STACK: usize = 16 << 20;

/// Compiles a CEL condition after checking its nesting, on a thread of its
/// own with a known stack.
pub(super) fn compile_condition(src: &str) -> Result<cel::Program, ConditionError> {
    if src.len() > MAX_CONDITION_LEN {
        return Err(ConditionError::TooLong(src.len()));
    }
    let (mut depth, mut prefix) = (0usize, 0usize);
    // What is inside a string literal does not nest: skip it.
    let (mut quote, mut escaped) = (None, false);
    for c in src.chars() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        if c == '"' || c == '\'' {
            quote = Some(c);
            prefix = 0;
            continue;
        }
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prefix = match c {
            '!' | '-' => prefix + 1,
            c if c.is_whitespace() => prefix,
            _ => 0,
        };
        if depth > MAX_CONDITION_NESTING || prefix > MAX_CONDITION_NESTING {
            return Err(ConditionError::TooDeep);
        }
    }
    let src = src.to_string();
    std::thread::Builder::new()
        .name("rule-compile".into())
        .stack_size(COMPILE_STACK)
        .spawn(move || {
            let program = cel::Program::compile(&src).map_err(ConditionError::Syntax)?;
            super::shape::check(program.expression())?;
            Ok(program)
        })
        .map_err(ConditionError::Thread)?
        .join()
        .map_err(|_| ConditionError::ParserFailed)?
}
