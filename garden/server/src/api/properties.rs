//! Property, SetProperty and RemoveProperty (Properties needs only the handle).

use garden_api::{GardenError, PropertyValue, Route, RouteMatch};

use super::decode;
use crate::service::Request;

pub fn get(m: RouteMatch) -> Request {
    Request::Property {
        handle: m.handle,
        key: m.key,
    }
}

pub fn set(m: RouteMatch, body: &[u8]) -> Result<Request, GardenError> {
    let PropertyValue { value } = decode(Route::SetProperty, body)?;
    Ok(Request::SetProperty {
        handle: m.handle,
        key: m.key,
        value,
    })
}

pub fn remove(m: RouteMatch) -> Request {
    Request::RemoveProperty {
        handle: m.handle,
        key: m.key,
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn property_routes() {
        let m = |method, path| Route::recognize(method, path).unwrap();
        let req = parse(
            m("PUT", "/containers/h/properties/a%20b"),
            br#"{"value":"v"}"#,
        )
        .unwrap();
        assert!(
            matches!(req, Request::SetProperty { handle, key, value } if handle == "h" && key == "a b" && value == "v")
        );
        let req = parse(m("GET", "/containers/h/properties/k"), b"").unwrap();
        assert!(matches!(req, Request::Property { key, .. } if key == "k"));
        let req = parse(m("DELETE", "/containers/h/properties/k"), b"").unwrap();
        assert!(matches!(req, Request::RemoveProperty { key, .. } if key == "k"));
        let req = parse(m("GET", "/containers/h/properties"), b"").unwrap();
        assert!(matches!(req, Request::Properties { handle } if handle == "h"));
        assert!(parse(m("PUT", "/containers/h/properties/k"), br#"{"value":1}"#).is_err());
    }
}
