//! Who may use the HTTP surface. With `HTTP_AUTH_TOKEN` set, every path but the probes
//! (`/health`, `/ready`) and `/metrics` (unless `METRICS_REQUIRE_AUTH`) needs the token, either
//! as `Authorization: Bearer <token>` or as the password of HTTP Basic, any user name, so that
//! a browser's own prompt opens the dashboard. The token is compared in constant time.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, web};
use base64::Engine;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The access rule of the server.
#[derive(Clone)]
pub struct Access {
    /// `None`: everything is open.
    token: Option<Secret>,
    metrics_require_auth: bool,
}

/// What a request's `Authorization` header amounts to.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Missing,
    Wrong,
}

impl Access {
    pub fn new(token: Option<Secret>, metrics_require_auth: bool) -> Access {
        Access {
            token,
            metrics_require_auth,
        }
    }

    fn is_open(&self, path: &str) -> bool {
        match path {
            "/health" | "/ready" => true,
            "/metrics" => !self.metrics_require_auth,
            _ => false,
        }
    }

    fn verdict(&self, path: &str, authorization: Option<&[u8]>) -> Verdict {
        let Some(token) = &self.token else {
            return Verdict::Allowed;
        };
        if self.is_open(path) {
            return Verdict::Allowed;
        }
        let Some(authorization) = authorization else {
            return Verdict::Missing;
        };
        let offered = credential(authorization);
        match offered {
            Some(offered) if bool::from(offered.as_slice().ct_eq(token.expose().as_bytes())) => {
                Verdict::Allowed
            }
            _ => Verdict::Wrong,
        }
    }
}

/// The token a header offers: a Bearer token, or the password of Basic credentials.
fn credential(header: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, value) = text.split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// The middleware: answers 401 with the challenges a browser and an API client understand,
/// or passes the request on.
/// Without an [`Access`] in the app's data, every request fails (500): never open by mistake.
pub async fn require_token(
    access: web::Data<Access>,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let verdict = access.verdict(
        req.path(),
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    );
    if verdict == Verdict::Allowed {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let (bearer, error) = match verdict {
        Verdict::Wrong => (
            r#"Bearer realm="panopticon", error="invalid_token""#,
            "the token is wrong",
        ),
        _ => (
            r#"Bearer realm="panopticon""#,
            "authentication required: send Authorization: Bearer <token>, or the token as the HTTP Basic password",
        ),
    };
    let response = HttpResponse::Unauthorized()
        .append_header((
            header::WWW_AUTHENTICATE,
            r#"Basic realm="panopticon", charset="UTF-8""#,
        ))
        .append_header((header::WWW_AUTHENTICATE, bearer))
        .json(json!({ "error": error }));
    Ok(req.into_response(response).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
        .into_bytes()
    }

    #[test]
    fn the_token_opens_what_it_guards_in_either_form() {
        let access = Access::new(Some(Secret::new("t0ken")), false);
        assert_eq!(access.verdict("/status", None), Verdict::Missing);
        assert_eq!(
            access.verdict("/status", Some(b"Bearer t0ken")),
            Verdict::Allowed
        );
        assert_eq!(
            access.verdict("/status", Some(b"bearer t0ke")),
            Verdict::Wrong
        );
        assert_eq!(
            access.verdict("/", Some(&basic("anyone:t0ken"))),
            Verdict::Allowed
        );
        assert_eq!(
            access.verdict("/", Some(&basic("t0ken:wrong"))),
            Verdict::Wrong
        );
        assert_eq!(access.verdict("/health", None), Verdict::Allowed);
        assert_eq!(access.verdict("/metrics", None), Verdict::Allowed);
        let closed = Access::new(Some(Secret::new("t0ken")), true);
        assert_eq!(closed.verdict("/metrics", None), Verdict::Missing);
        assert_eq!(
            Access::new(None, false).verdict("/status", None),
            Verdict::Allowed
        );
    }
}
