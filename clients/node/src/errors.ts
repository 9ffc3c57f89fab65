/**
 * Typed errors for failed dhtd calls, translated from @grpc/grpc-js errors at the
 * client's edge (unary calls, the start of a stream, and mid-stream).
 */
import { Metadata, status as Status } from "@grpc/grpc-js";

export { Status };

/** The name of a gRPC status code, e.g. `"NOT_FOUND"`. */
export function statusName(code: Status): string {
  return Status[code] ?? `UNKNOWN_STATUS_${code}`;
}

/**
 * A dhtd call failed. `code` is the gRPC status code (`Status.NOT_FOUND`, ...),
 * `codeName` its name, `details` the server's message: for INVALID_ARGUMENT it
 * starts with the field name (`peer_id: ...`, `cids[1]: ...`, `key: ...`).
 */
export class DhtdError extends Error {
  readonly code: Status;
  readonly codeName: string;
  readonly details: string;
  readonly metadata: Metadata | undefined;

  constructor(code: Status, details: string, options: { metadata?: Metadata; cause?: unknown } = {}) {
    const codeName = statusName(code);
    super(details ? `${codeName}: ${details}` : codeName, { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.metadata = options.metadata;
  }
}

/** INVALID_ARGUMENT: a malformed peer ID, CID, key or multiaddr. */
export class InvalidArgumentError extends DhtdError {}

/** NOT_FOUND: the DHT walk ended without a result. */
export class NotFoundError extends DhtdError {}

/** DEADLINE_EXCEEDED: the call's `timeoutMs` (or dhtd's --query-timeout) passed. */
export class DeadlineExceededError extends DhtdError {}

/** UNAVAILABLE: dhtd is unreachable or has no DHT peers, or no peer accepted a record. */
export class UnavailableError extends DhtdError {}

/** FAILED_PRECONDITION: e.g. a recursive Provide without a block source, a DAG with a
 * missing block, or a Put older than the held record. */
export class FailedPreconditionError extends DhtdError {}

/** DATA_LOSS: a block of a recursive Provide's DAG does not hash to its CID. */
export class DataLossError extends DhtdError {}

/** CANCELLED: the call was cancelled (its AbortSignal fired, or the client closed). */
export class CancelledError extends DhtdError {}

/** INTERNAL: dhtd failed unexpectedly. */
export class InternalError extends DhtdError {}

type DhtdErrorClass = new (
  code: Status,
  details: string,
  options?: { metadata?: Metadata; cause?: unknown },
) => DhtdError;

const BY_CODE: ReadonlyMap<Status, DhtdErrorClass> = new Map<Status, DhtdErrorClass>([
  [Status.INVALID_ARGUMENT, InvalidArgumentError],
  [Status.NOT_FOUND, NotFoundError],
  [Status.DEADLINE_EXCEEDED, DeadlineExceededError],
  [Status.UNAVAILABLE, UnavailableError],
  [Status.FAILED_PRECONDITION, FailedPreconditionError],
  [Status.DATA_LOSS, DataLossError],
  [Status.CANCELLED, CancelledError],
  [Status.INTERNAL, InternalError],
]);

/** The error class for a status code (DhtdError itself for codes without a subclass). */
export function errorClassFor(code: Status): DhtdErrorClass {
  return BY_CODE.get(code) ?? DhtdError;
}

interface GrpcStatusError {
  code: number;
  details?: unknown;
  metadata?: unknown;
}

function isGrpcStatusError(err: unknown): err is GrpcStatusError {
  return (
    err instanceof Error &&
    typeof (err as Partial<GrpcStatusError>).code === "number" &&
    "details" in err
  );
}

/**
 * Translates a @grpc/grpc-js `ServiceError` into the matching `DhtdError` subclass.
 * Anything else (already a DhtdError, or not a gRPC error at all) is returned as is.
 */
export function toDhtdError(err: unknown): unknown {
  if (err instanceof DhtdError || !isGrpcStatusError(err)) {
    return err;
  }
  const cls = errorClassFor(err.code as Status);
  const details = typeof err.details === "string" ? err.details : "";
  const metadata = err.metadata instanceof Metadata ? err.metadata : undefined;
  return new cls(err.code as Status, details, { metadata, cause: err });
}
