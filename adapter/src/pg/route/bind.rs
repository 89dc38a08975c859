//! Bound parameters of a cached statement: decoding a Bind's values into the types of the
//! normalized query's parameter slots.

use super::*;

pub(super) fn has_placeholder(p: &ParamSource) -> bool {
    match p {
        ParamSource::Placeholder(_) => true,
        ParamSource::List(items) => items.iter().any(has_placeholder),
        ParamSource::Literal(_) => false,
    }
}

/// The statement name of a Bind, without decoding its parameters.
pub(super) fn bind_statement_name(body: &[u8]) -> Option<&str> {
    let portal_end = body.iter().position(|b| *b == 0)?;
    let rest = &body[portal_end + 1..];
    let stmt_end = rest.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&rest[..stmt_end]).ok()
}

/// Decodes the bound values, each with the type of the slot its placeholder fills (or the
/// type the client declared in Parse).
pub(super) fn decode_bind(
    bind: &Bind,
    declared: &[u32],
    params: &[ParamSource],
    slot_types: &[SqlType],
) -> Result<Vec<Option<Value>>, String> {
    let formats = Formats::new(&bind.param_formats);
    bind.params
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let Some(raw) = raw else {
                return Ok(Some(Value::Null));
            };
            let slot_ty =
                larder_sql::normalize::placeholder_slot_type(params, slot_types, i + 1).cloned();
            let declared_oid = declared.get(i).copied().filter(|o| *o != 0);
            let declared_ty = match declared_oid {
                None => None,
                Some(oid) => {
                    let ty = pgtypes::type_from_oid(oid)
                        .ok_or_else(|| format!("parameter ${} is declared with type oid {oid}", i + 1))?;
                    if let Some(slot) = &slot_ty {
                        if !compares_alike(&ty, slot) {
                            return Err(format!(
                                "parameter ${} is declared as {}, which compares differently from {}",
                                i + 1,
                                pgtypes::type_name(&ty),
                                pgtypes::type_name(slot)
                            ));
                        }
                    }
                    Some(ty)
                }
            };
            let ty = declared_ty.or(slot_ty);
            if formats.is_binary(i) {
                let ty =
                    ty.ok_or_else(|| format!("unknown type for binary parameter ${}", i + 1))?;
                pgtypes::decode_binary(&ty, raw)
                    .map(Some)
                    .map_err(|e| e.to_string())
            } else {
                let s = std::str::from_utf8(raw)
                    .map_err(|_| "parameter is not valid UTF-8".to_string())?;
                Ok(Some(Value::Text(s.to_string())))
            }
        })
        .collect()
}

/// Whether a value declared as `declared` compares with a `slot` column exactly as Larder
/// compares it (same type family, no implicit conversion with other semantics, such as
/// bpchar dropping trailing spaces).
pub(super) fn compares_alike(declared: &SqlType, slot: &SqlType) -> bool {
    use SqlType::*;
    let int_like = |t: &SqlType| matches!(t, Int2 | Int4 | Int8 | Numeric);
    let float = |t: &SqlType| matches!(t, Float4 | Float8);
    let text = |t: &SqlType| matches!(t, Text | Varchar);
    declared == slot
        || (int_like(declared) && int_like(slot))
        || (float(declared) && float(slot))
        || (text(declared) && text(slot))
}
