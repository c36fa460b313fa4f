/**
 * Optional TLS for the cluster's HTTP services (the master's API, a worker's
 * block service): the certificate and key a server presents, the CA a client
 * verifies them with, and one constructor for a server that speaks HTTPS when it
 * has a certificate and plain HTTP otherwise. The files are read by `cli/`; this
 * module only holds their bytes.
 */
import { createServer as createHttpServer, type RequestListener, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';

/** What a server presents. */
export interface ServerTls {
  cert: Buffer;
  key: Buffer;
}

/** What a client trusts: the CA that signed the cluster's server certificates. */
export interface ClientTls {
  ca: Buffer;
}

/** An HTTP server, or an HTTPS one with `tls`; both close and count connections alike. */
export function createClusterServer(tls: ServerTls | undefined, listener?: RequestListener): Server {
  return tls ? createHttpsServer({ cert: tls.cert, key: tls.key }, listener) : createHttpServer(listener);
}
