"""Storage's errors, in the shapes the real server (supabase/storage) sends.

This module owns the error types of the Storage stand-in and one constructor
per error the server raises, with its code, message and ``error`` text
(``src/storage/errors.ts``). :class:`StorageError` is rendered with
``statusCode`` in the body and HTTP 400 (500 only for 500), as
``src/http/error-handler.ts`` does; :class:`TusError` keeps its real HTTP
status and a plain-text body, as @tus/server does.
"""

from __future__ import annotations


class StorageError(Exception):
    """A storage-server error: ``statusCode`` in the body, HTTP 400 unless 500."""

    def __init__(self, status: int, code: str, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error = error or code

    @property
    def http_status(self) -> int:
        return 500 if self.status == 500 else 400

    def body(self) -> dict[str, str]:
        return {
            "statusCode": str(self.status),
            "code": self.code,
            "error": self.error,
            "message": self.message,
        }


class TusError(Exception):
    """A TUS protocol error: real HTTP status, plain-text body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.text = body


def _no_such_bucket() -> StorageError:
    return StorageError(404, "NoSuchBucket", "Bucket not found", "Bucket not found")


def _no_such_key() -> StorageError:
    return StorageError(404, "NoSuchKey", "Object not found", "not_found")


def _duplicate(code: str = "KeyAlreadyExists") -> StorageError:
    return StorageError(409, code, "The resource already exists", "Duplicate")


def _entity_too_large() -> StorageError:
    return StorageError(
        413, "EntityTooLarge", "The object exceeded the maximum allowed size", "Payload too large"
    )


def _invalid_mime(mime: str) -> StorageError:
    return StorageError(415, "InvalidMimeType", f"mime type {mime} is not supported", "invalid_mime_type")


def _access_denied(message: str) -> StorageError:
    return StorageError(403, "AccessDenied", message or "Access denied", "Unauthorized")


def _invalid_key(key: str) -> StorageError:
    return StorageError(400, "InvalidKey", f"Invalid key: {key}")


def _invalid_bucket_name(name: str) -> StorageError:
    return StorageError(400, "InvalidBucketName", "Bucket name invalid", "Invalid Input")


def _bucket_not_empty() -> StorageError:
    return StorageError(409, "ResourceNotEmpty", "The bucket you tried to delete is not empty")


def _no_content() -> StorageError:
    return StorageError(400, "InvalidRequest", "No content provided")


def _validation(message: str) -> StorageError:
    # Fastify's JSON-schema rejection, which happens before any storage logic.
    return StorageError(400, "FST_ERR_VALIDATION", message, "Bad Request")
