//! From the parser's syntax tree to what Panopticon evaluates. Every construct is checked
//! here, before the database is asked anything: what is not supported is refused by name
//! (`not supported by Panopticon: …`), so that no query gets a wrong answer.

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{Expr, LabelModifier, Offset, VectorMatchCardinality, VectorSelector};

use super::{JOB, Limits, Metric, NAME_LABEL, PromError, label_column};

/// An expression Panopticon can evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Number(f64),
    String(String),
    /// An instant vector selector: the newest sample of each series within the lookback.
    Selector(Selector),
    /// `<func>_over_time(selector[range])`, computed by the database.
    OverTime {
        func: OverTime,
        selector: Selector,
        range_ms: i64,
    },
    Aggregate {
        op: AggregateOp,
        grouping: Grouping,
        /// `k` of topk and bottomk, φ of quantile: a scalar expression.
        param: Option<Box<Plan>>,
        expr: Box<Plan>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Plan>,
        rhs: Box<Plan>,
        /// `bool`: comparisons answer 0 or 1 instead of filtering.
        return_bool: bool,
        /// `on (…)` or `ignoring (…)`; `None`: every label but the name.
        matching: Option<Matching>,
    },
    /// Unary minus.
    Negate(Box<Plan>),
}

/// What an expression evaluates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Scalar,
    Vector,
    String,
}

impl Plan {
    pub fn kind(&self) -> Kind {
        match self {
            Plan::Number(_) => Kind::Scalar,
            Plan::String(_) => Kind::String,
            Plan::Selector(_) | Plan::OverTime { .. } | Plan::Aggregate { .. } => Kind::Vector,
            Plan::Binary { lhs, rhs, .. } => {
                if lhs.kind() == Kind::Scalar && rhs.kind() == Kind::Scalar {
                    Kind::Scalar
                } else {
                    Kind::Vector
                }
            }
            Plan::Negate(inner) => inner.kind(),
        }
    }
}

/// The rows a selector reads: which metrics, which conditions on the label columns, and how
/// far back in time (`offset`).
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The metrics whose name matches; empty where no series can match (`job="other"`).
    pub metrics: Vec<Metric>,
    pub conditions: Vec<Condition>,
    /// `offset`: the selector is read this much earlier than the step (negative: later).
    pub offset_ms: i64,
}

/// One label matcher on a column, as SQL will test it.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: &'static str,
    pub op: ConditionOp,
    /// The value, or for a regular expression the anchored pattern PostgreSQL matches.
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionOp {
    Equal,
    NotEqual,
    Match,
    NotMatch,
}

impl ConditionOp {
    pub fn sql(self) -> &'static str {
        match self {
            ConditionOp::Equal => "=",
            ConditionOp::NotEqual => "<>",
            ConditionOp::Match => "~",
            ConditionOp::NotMatch => "!~",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverTime {
    Avg,
    Min,
    Max,
    Count,
    Last,
    /// φ, a number literal.
    Quantile(OrderedF64),
}

/// A float that compares bit for bit, so that plans compare.
#[derive(Debug, Clone, Copy)]
pub struct OrderedF64(pub f64);

impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for OrderedF64 {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    TopK,
    BottomK,
    Quantile,
}

/// Which labels an aggregation keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

/// Which labels two vectors are matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matching {
    On(Vec<String>),
    Ignoring(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Gt | BinaryOp::Lt | BinaryOp::Ge | BinaryOp::Le
        )
    }

    fn from_token(token: &str) -> Option<BinaryOp> {
        Some(match token {
            "+" => BinaryOp::Add,
            "-" => BinaryOp::Sub,
            "*" => BinaryOp::Mul,
            "/" => BinaryOp::Div,
            "%" => BinaryOp::Mod,
            "^" => BinaryOp::Pow,
            "atan2" => BinaryOp::Atan2,
            "==" => BinaryOp::Eq,
            "!=" => BinaryOp::Ne,
            ">" => BinaryOp::Gt,
            "<" => BinaryOp::Lt,
            ">=" => BinaryOp::Ge,
            "<=" => BinaryOp::Le,
            _ => return None,
        })
    }
}

/// Checks `expr` and turns it into a plan; refuses what is not supported, by name.
pub fn plan(expr: &Expr, limits: Limits) -> Result<Plan, PromError> {
    match expr {
        Expr::NumberLiteral(n) => Ok(Plan::Number(n.val)),
        Expr::StringLiteral(s) => Ok(Plan::String(s.val.clone())),
        Expr::Paren(p) => plan(&p.expr, limits),
        Expr::Unary(u) => Ok(match plan(&u.expr, limits)? {
            Plan::Number(n) => Plan::Number(-n),
            inner => Plan::Negate(Box::new(inner)),
        }),
        Expr::VectorSelector(vs) => Ok(Plan::Selector(selector(vs)?)),
        Expr::MatrixSelector(_) => Err(PromError::BadData(
            "a range vector is only allowed as the argument of a *_over_time function".into(),
        )),
        Expr::Subquery(_) => Err(PromError::unsupported("subqueries")),
        Expr::Call(call) => over_time(call, limits),
        Expr::Aggregate(agg) => aggregate(agg, limits),
        Expr::Binary(bin) => binary(bin, limits),
        Expr::Extension(_) => Err(PromError::unsupported("extension expressions")),
    }
}

fn over_time(call: &promql_parser::parser::Call, limits: Limits) -> Result<Plan, PromError> {
    let name = call.func.name;
    let args = &call.args.args;
    let (func, matrix) = match (name, args.len()) {
        ("avg_over_time", 1) => (OverTime::Avg, &args[0]),
        ("min_over_time", 1) => (OverTime::Min, &args[0]),
        ("max_over_time", 1) => (OverTime::Max, &args[0]),
        ("count_over_time", 1) => (OverTime::Count, &args[0]),
        ("last_over_time", 1) => (OverTime::Last, &args[0]),
        ("quantile_over_time", 2) => match plan(&args[0], limits)? {
            Plan::Number(q) => (OverTime::Quantile(OrderedF64(q)), &args[1]),
            _ => {
                return Err(PromError::unsupported(
                    "a quantile_over_time whose φ is not a number literal",
                ));
            }
        },
        _ => return Err(PromError::unsupported(format!("the function {name}()"))),
    };
    let Expr::MatrixSelector(ms) = unparen(matrix) else {
        return Err(PromError::unsupported(format!(
            "{name}() of anything but a range vector selector (subqueries)"
        )));
    };
    let range_ms = i64::try_from(ms.range.as_millis()).unwrap_or(i64::MAX);
    if range_ms <= 0 {
        return Err(PromError::BadData("a range must be positive".into()));
    }
    if range_ms > limits.max_range_ms {
        return Err(PromError::BadData(format!(
            "the range [{}] is wider than API_MAX_RANGE_HOURS ({} h)",
            promql_parser::util::display_duration(&ms.range),
            limits.max_range_ms / 3_600_000
        )));
    }
    Ok(Plan::OverTime {
        func,
        selector: selector(&ms.vs)?,
        range_ms,
    })
}

fn unparen(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

fn aggregate(
    agg: &promql_parser::parser::AggregateExpr,
    limits: Limits,
) -> Result<Plan, PromError> {
    let token = agg.op.to_string();
    let op = match token.as_str() {
        "sum" => AggregateOp::Sum,
        "avg" => AggregateOp::Avg,
        "min" => AggregateOp::Min,
        "max" => AggregateOp::Max,
        "count" => AggregateOp::Count,
        "topk" => AggregateOp::TopK,
        "bottomk" => AggregateOp::BottomK,
        "quantile" => AggregateOp::Quantile,
        other => return Err(PromError::unsupported(format!("the aggregation {other}"))),
    };
    let grouping = match &agg.modifier {
        None => Grouping::By(Vec::new()),
        Some(LabelModifier::Include(labels)) => Grouping::By(labels.labels.clone()),
        Some(LabelModifier::Exclude(labels)) => Grouping::Without(labels.labels.clone()),
    };
    let param = match &agg.param {
        None => None,
        Some(p) => {
            let p = plan(p, limits)?;
            if p.kind() != Kind::Scalar {
                return Err(PromError::BadData(format!(
                    "the parameter of {token} must be a scalar"
                )));
            }
            Some(Box::new(p))
        }
    };
    let expr = plan(&agg.expr, limits)?;
    if expr.kind() != Kind::Vector {
        return Err(PromError::BadData(format!(
            "{token} aggregates an instant vector, not a scalar"
        )));
    }
    Ok(Plan::Aggregate {
        op,
        grouping,
        param,
        expr: Box::new(expr),
    })
}

fn binary(bin: &promql_parser::parser::BinaryExpr, limits: Limits) -> Result<Plan, PromError> {
    let token = bin.op.to_string();
    let op = BinaryOp::from_token(&token)
        .ok_or_else(|| PromError::unsupported(format!("the operator {token}")))?;
    let lhs = plan(&bin.lhs, limits)?;
    let rhs = plan(&bin.rhs, limits)?;
    let (mut return_bool, mut matching) = (false, None);
    if let Some(modifier) = &bin.modifier {
        return_bool = modifier.return_bool;
        match &modifier.card {
            VectorMatchCardinality::OneToOne => {}
            VectorMatchCardinality::ManyToOne(_) => {
                return Err(PromError::unsupported("group_left"));
            }
            VectorMatchCardinality::OneToMany(_) => {
                return Err(PromError::unsupported("group_right"));
            }
            VectorMatchCardinality::ManyToMany => {
                return Err(PromError::unsupported(format!("the operator {token}")));
            }
        }
        if modifier.fill_values.lhs.is_some() || modifier.fill_values.rhs.is_some() {
            return Err(PromError::unsupported("fill values of a vector match"));
        }
        matching = match &modifier.matching {
            None => None,
            Some(LabelModifier::Include(labels)) => Some(Matching::On(labels.labels.clone())),
            Some(LabelModifier::Exclude(labels)) => Some(Matching::Ignoring(labels.labels.clone())),
        };
    }
    if lhs.kind() == Kind::String || rhs.kind() == Kind::String {
        return Err(PromError::BadData(format!(
            "the operator {token} is not defined on strings"
        )));
    }
    if op.is_comparison()
        && !return_bool
        && lhs.kind() == Kind::Scalar
        && rhs.kind() == Kind::Scalar
    {
        return Err(PromError::BadData(
            "comparisons between scalars must use the bool modifier".into(),
        ));
    }
    if let (Plan::Number(a), Plan::Number(b), false) = (&lhs, &rhs, op.is_comparison()) {
        return Ok(Plan::Number(super::eval::arithmetic(op, *a, *b)));
    }
    Ok(Plan::Binary {
        op,
        lhs: Box::new(lhs),
        rhs: Box::new(rhs),
        return_bool,
        matching,
    })
}

fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Some(Offset::Neg(d)) => -i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    }
}

fn selector(vs: &VectorSelector) -> Result<Selector, PromError> {
    if vs.at.is_some() {
        return Err(PromError::unsupported("the @ modifier"));
    }
    let offset_ms = offset_ms(&vs.offset);
    if offset_ms.unsigned_abs() > 10 * 365 * 86_400_000 {
        return Err(PromError::BadData("offset out of range".into()));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(PromError::unsupported("`or` between label matchers"));
    }
    let mut metrics: Vec<Metric> = match &vs.name {
        Some(name) => Metric::ALL
            .into_iter()
            .filter(|m| m.name() == name)
            .collect(),
        None => Metric::ALL.to_vec(),
    };
    let mut conditions = Vec::new();
    for matcher in &vs.matchers.matchers {
        if matcher.name == NAME_LABEL {
            metrics.retain(|m| matcher.is_match(m.name()));
            continue;
        }
        let Some(column) = label_column(&matcher.name) else {
            // `job` is the same on every series and any other label is empty on all of them:
            // the matcher either keeps every series or none.
            let value = if matcher.name == "job" { JOB } else { "" };
            if !matcher.is_match(value) {
                metrics.clear();
            }
            continue;
        };
        conditions.push(condition(column, matcher)?);
    }
    Ok(Selector {
        metrics,
        conditions,
        offset_ms,
    })
}

fn condition(column: &'static str, matcher: &Matcher) -> Result<Condition, PromError> {
    let (op, value) = match &matcher.op {
        MatchOp::Equal => (ConditionOp::Equal, matcher.value.clone()),
        MatchOp::NotEqual => (ConditionOp::NotEqual, matcher.value.clone()),
        MatchOp::Re(_) => (ConditionOp::Match, pg_regex(&matcher.value)?),
        MatchOp::NotRe(_) => (ConditionOp::NotMatch, pg_regex(&matcher.value)?),
    };
    Ok(Condition { column, op, value })
}

/// The PostgreSQL pattern matching exactly what Prometheus's (RE2) `re` matches, anchored at
/// both ends as Prometheus anchors it. The two dialects agree on literals, `.`, classes,
/// alternation, groups and repetition; they differ on escapes of letters (`\b` is a word
/// boundary in RE2, a backspace in PostgreSQL; `\d` follows the locale in PostgreSQL) and on
/// flags, so those are refused rather than risk a wrong answer. Label values never hold a
/// newline (the validator refuses control characters), where `.` would differ too.
pub fn pg_regex(re: &str) -> Result<String, PromError> {
    let mut chars = re.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => {}
                Some(e) => {
                    return Err(PromError::unsupported(format!(
                        "the escape \\{e} in a regular expression (escape punctuation only)"
                    )));
                }
                None => {
                    return Err(PromError::BadData(
                        "a regular expression may not end in a backslash".into(),
                    ));
                }
            },
            '(' if chars.peek() == Some(&'?') => {
                chars.next();
                if chars.next() != Some(':') {
                    return Err(PromError::unsupported(
                        "flags and named groups in a regular expression (only (?:…))",
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(format!("^(?:{re})$"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_samples: 1000,
            max_range_ms: 168 * 3_600_000,
        }
    }

    fn planned(q: &str) -> Result<Plan, PromError> {
        plan(&super::super::parse(q)?, limits())
    }

    #[test]
    fn selectors_plan_to_columns_and_static_labels() {
        let Plan::Selector(s) =
            planned(r#"pod_cpu_usage_percent{pod=~"a-.*",node!="n2"} offset 5m"#).unwrap()
        else {
            panic!("a selector");
        };
        assert_eq!(s.metrics, [Metric::Cpu]);
        assert_eq!(s.offset_ms, 300_000);
        assert_eq!(
            s.conditions,
            [
                Condition {
                    column: "pod_name",
                    op: ConditionOp::Match,
                    value: "^(?:a-.*)$".into()
                },
                Condition {
                    column: "node_name",
                    op: ConditionOp::NotEqual,
                    value: "n2".into()
                },
            ]
        );
        let Plan::Selector(s) = planned(r#"{__name__=~"pod_.*",job="panopticon"}"#).unwrap() else {
            panic!("a selector");
        };
        assert_eq!(s.metrics, Metric::ALL);
        let Plan::Selector(s) = planned(r#"pod_memory_usage_mib{job="other"}"#).unwrap() else {
            panic!("a selector");
        };
        assert!(s.metrics.is_empty());
        let Plan::Selector(s) = planned("up").unwrap() else {
            panic!("a selector")
        };
        assert!(s.metrics.is_empty(), "an unknown metric has no series");
    }

    #[test]
    fn unsupported_constructs_are_refused_by_name() {
        for (q, what) in [
            ("rate(pod_cpu_usage_percent[5m])", "rate"),
            ("stddev(pod_cpu_usage_percent)", "stddev"),
            ("pod_cpu_usage_percent and pod_memory_usage_mib", "and"),
            ("pod_cpu_usage_percent @ 100", "@ modifier"),
            ("max_over_time(pod_cpu_usage_percent[10m:1m])", "subqueries"),
            (
                "pod_cpu_usage_percent / on(pod) group_left pod_memory_usage_mib",
                "group_left",
            ),
            (r#"pod_cpu_usage_percent{pod=~"\\bx"}"#, "escape"),
            (r#"pod_cpu_usage_percent{pod=~"(?i)x"}"#, "flags"),
        ] {
            match planned(q) {
                Err(PromError::Execution(m)) => assert!(m.contains(what), "{q}: {m}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }

    #[test]
    fn constant_arithmetic_folds() {
        assert_eq!(planned("1 + 2 * 3").unwrap(), Plan::Number(7.0));
        assert_eq!(planned("-(2)").unwrap(), Plan::Number(-2.0));
    }
}
