//! Bytes served as they are, the same every time: the OpenAPI description and the
//! console's files. Each carries an entity tag so clients revalidate instead of
//! downloading again.

use actix_web::http::header::{CacheControl, CacheDirective, ETAG, IF_NONE_MATCH};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};

/// A fixed body, its media type and its entity tag.
pub struct Asset {
    body: Bytes,
    content_type: &'static str,
    tag: String,
}

impl Asset {
    /// `body` served as `content_type`, tagged by its digest.
    pub fn new(body: impl Into<Bytes>, content_type: &'static str) -> Self {
        let body = body.into();
        let tag = format!("\"{}\"", &blake3::hash(&body).to_hex()[..32]);
        Self {
            body,
            content_type,
            tag,
        }
    }

    /// The bytes served.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The answer to `request`: 304 when it already holds these bytes, else 200 with them.
    /// `headers` adds the caller's own headers to either.
    pub fn serve(
        &self,
        request: &HttpRequest,
        headers: impl FnOnce(&mut HttpResponseBuilder),
    ) -> HttpResponse {
        let fresh = request
            .headers()
            .get_all(IF_NONE_MATCH)
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|candidate| candidate.trim() == self.tag || candidate.trim() == "*");
        let mut response = if fresh {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        response
            .insert_header((ETAG, self.tag.as_str()))
            .insert_header(CacheControl(vec![CacheDirective::NoCache]));
        headers(&mut response);
        if fresh {
            response.finish()
        } else {
            response
                .content_type(self.content_type)
                .body(self.body.clone())
        }
    }
}
