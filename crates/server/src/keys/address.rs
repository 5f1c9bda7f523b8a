//! Which key, of which owner, a request is about: the `?owner=` query and the
//! [`KeyAddress`] of `/api-keys/{id}` routes, under the owner rules.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use keygate_core::api_key::validate_owner;
use keygate_core::{ApiKeyId, Principal, ValidationError};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::error::ApiError;
use crate::guard::Caller;

/// `?owner=`: whose keys a call is about.
#[derive(Debug, Deserialize)]
pub struct OwnerQuery {
    owner: Option<String>,
}

impl FromRequest for OwnerQuery {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(OwnerQuery::parse(request.query_string()))
    }
}

impl OwnerQuery {
    /// Reads a query string. Unlike `web::Query`, which turns bytes that are not UTF-8
    /// into U+FFFD (so that `%FF` and `%FE` would name the same owner), refuses them.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        query.split('&').try_for_each(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let readable = |text: &str| {
                percent_decode_str(&text.replace('+', " "))
                    .decode_utf8()
                    .is_ok()
            };
            if readable(name) && readable(value) {
                Ok(())
            } else {
                let field = if readable(name) && name == "owner" {
                    "owner"
                } else {
                    "query"
                };
                Err(ApiError::from(ValidationError::new(
                    field,
                    "must percent-encode UTF-8 text",
                )))
            }
        })?;
        web::Query::<OwnerQuery>::from_query(query)
            .map(web::Query::into_inner)
            .map_err(ApiError::invalid_query)
    }

    /// The owner named, if any: an empty `owner=` names none, as in Blnk.
    pub(crate) fn owner(&self) -> Result<Option<String>, ValidationError> {
        match self.owner.as_deref() {
            None | Some("") => Ok(None),
            Some(owner) => validate_owner(owner).map(Some),
        }
    }
}

/// The key a `/api-keys/{id}` request addresses, as the request names it: the caller,
/// the id in the path and the `?owner=` query. [`KeyAddress::resolve`] applies the owner
/// rules when the handler is ready to, after it has validated the request's body.
#[derive(Debug)]
pub struct KeyAddress {
    caller: Principal,
    id: String,
    query: OwnerQuery,
}

impl KeyAddress {
    /// The key's id and the owner the caller may act on: the master key must name one
    /// with `?owner=`; an API key acts on its own and may name no other. An id that
    /// cannot name a key is not found without asking the database.
    pub fn resolve(&self) -> Result<(ApiKeyId, String), ApiError> {
        let owner = self
            .caller
            .target_owner(self.query.owner()?.as_deref())?
            .to_owned();
        let id = ApiKeyId::from_request(&self.id).ok_or(ApiError::KeyNotFound)?;
        Ok((id, owner))
    }

    fn extract(request: &HttpRequest) -> Result<Self, ApiError> {
        let Caller(caller) = Caller::extract(request).into_inner()?;
        let query = OwnerQuery::parse(request.query_string())?;
        let id = request
            .match_info()
            .get("id")
            .unwrap_or_default()
            .to_owned();
        Ok(KeyAddress { caller, id, query })
    }
}

impl FromRequest for KeyAddress {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(KeyAddress::extract(request))
    }
}
