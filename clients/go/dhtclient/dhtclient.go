// Package dhtclient is a small convenience layer over the generated dhtd stubs
// (package dhtv1): one connection for both services, streams drained into
// callbacks, and gRPC statuses explained in words.
//
// The generated clients stay available as Client.DHT and Client.Node for
// anything this package does not cover.
package dhtclient

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	dhtv1 "dhtd/clients/go/dht/v1"
)

// DefaultAddr is where dhtd serves gRPC unless told otherwise.
const DefaultAddr = "127.0.0.1:50051"

// Client is one plaintext gRPC connection to dhtd.
type Client struct {
	conn *grpc.ClientConn
	// DHT and Node are the generated clients, for direct use.
	DHT  dhtv1.DhtServiceClient
	Node dhtv1.NodeServiceClient
}

// Dial connects to dhtd at addr (host:port) without TLS: dhtd listens on
// localhost or beside its app. The connection is made lazily, so an
// unreachable dhtd shows up as UNAVAILABLE on the first call. Extra options
// are passed to grpc.DialContext after the defaults.
func Dial(ctx context.Context, addr string, opts ...grpc.DialOption) (*Client, error) {
	// grpc-go 1.33 (Debian bookworm) has no credentials/insecure package.
	all := append([]grpc.DialOption{grpc.WithInsecure()}, opts...)
	conn, err := grpc.DialContext(ctx, addr, all...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return &Client{conn: conn, DHT: dhtv1.NewDhtServiceClient(conn), Node: dhtv1.NewNodeServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Info describes the node.
func (c *Client) Info(ctx context.Context) (*dhtv1.InfoResponse, error) {
	return c.Node.Info(ctx, &dhtv1.InfoRequest{})
}

// FindPeer returns the addresses of a peer; NOT_FOUND if no peer knows one.
func (c *Client) FindPeer(ctx context.Context, peerID string) (*dhtv1.PeerInfo, error) {
	resp, err := c.DHT.FindPeer(ctx, &dhtv1.FindPeerRequest{PeerId: peerID})
	if err != nil {
		return nil, err
	}
	return resp.GetPeer(), nil
}

// Get returns the best value stored under key; NOT_FOUND if none.
func (c *Client) Get(ctx context.Context, key []byte) ([]byte, error) {
	resp, err := c.DHT.Get(ctx, &dhtv1.GetRequest{Key: key})
	if err != nil {
		return nil, err
	}
	return resp.GetValue(), nil
}

// FindProvs returns up to n providers of cid (n = 0 means dhtd's default, 20).
// Each provider is also passed to onProvider, if not nil, as it arrives.
func (c *Client) FindProvs(ctx context.Context, cid string, n uint32, onProvider func(*dhtv1.PeerInfo)) ([]*dhtv1.PeerInfo, error) {
	stream, err := c.DHT.FindProvs(ctx, &dhtv1.FindProvsRequest{Cid: cid, NumProviders: n})
	if err != nil {
		return nil, err
	}
	var found []*dhtv1.PeerInfo
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return found, nil
		}
		if err != nil {
			return found, err
		}
		found = append(found, resp.GetProvider())
		if onProvider != nil {
			onProvider(resp.GetProvider())
		}
	}
}

// Provide announces this node as a provider of each CID. Every event is passed
// to onEvent, if not nil, one call per event in stream order, with the CID it
// belongs to. It returns the number of FINAL_PEER events: announcements
// delivered. It is ProvideWith with dhtd's default min_holders.
//
// Provide, Put and Query ask dhtd for batched events (batch_events: several
// per gRPC message, which costs both ends less CPU) and hand them to onEvent
// one at a time; from a dhtd that sends one event per message they do the same.
func (c *Client) Provide(ctx context.Context, cids []string, onEvent func(cid string, ev *dhtv1.QueryEvent)) (int, error) {
	res, err := c.ProvideWith(ctx, cids, ProvideOptions{}, onEvent)
	return res.Finals, err
}

// ProvideOptions are the optional fields of a Provide.
type ProvideOptions struct {
	// MinHolders: the call ends once this many peers took each CID's record
	// (0: dhtd's --min-holders, 5; 20 or more: every store).
	MinHolders uint32
	// Recursive: provide every CID of the DAG under each CID.
	Recursive bool
}

// ProvideResult is how a Provide ended.
type ProvideResult struct {
	// Finals is the number of FINAL_PEER events: announcements delivered.
	Finals int
	// Holders is how many peers had taken each CID's record when the call
	// ended, in request order, as dhtd reported it in the stream's last message
	// (nil from a dhtd that does not report holders).
	Holders []*dhtv1.ProvideHolders
}

// ProvideWith is Provide with options; it also returns the holders per CID.
func (c *Client) ProvideWith(ctx context.Context, cids []string, opts ProvideOptions, onEvent func(cid string, ev *dhtv1.QueryEvent)) (ProvideResult, error) {
	var res ProvideResult
	stream, err := c.DHT.Provide(ctx, &dhtv1.ProvideRequest{
		Cids: cids, Recursive: opts.Recursive, BatchEvents: true, MinHolders: opts.MinHolders,
	})
	if err != nil {
		return res, err
	}
	res.Finals, err = drain(func() ([]labeled, error) {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		// The last message has no event and carries the holders of every CID;
		// an eventless message that is not the last is nothing.
		events := provideEvents(resp)
		res.Holders = nil
		if len(events) == 0 && len(resp.GetHolders()) > 0 {
			res.Holders = resp.GetHolders()
		}
		return events, nil
	}, onEvent)
	return res, err
}

// Put stores value under key here and on the closest peers. Every event is
// passed to onEvent, if not nil, one call per event in stream order. It
// returns the number of peers that stored it (the FINAL_PEER events). It is
// PutWith with dhtd's default min_holders.
func (c *Client) Put(ctx context.Context, key, value []byte, onEvent func(*dhtv1.QueryEvent)) (int, error) {
	res, err := c.PutWith(ctx, key, value, PutOptions{}, onEvent)
	return res.Finals, err
}

// PutOptions are the optional fields of a Put.
type PutOptions struct {
	// MinHolders: the call ends once this many peers stored the record (0:
	// dhtd's --min-holders, 5; 20 or more: every store).
	MinHolders uint32
}

// PutResult is how a Put ended.
type PutResult struct {
	// Finals is the number of FINAL_PEER events: peers that stored the record.
	Finals int
	// Holders is how many peers had stored the record when the call ended, as
	// dhtd reported it in the stream's last message; HoldersReported is false
	// (and Holders 0) with a dhtd that does not report it.
	Holders         uint32
	HoldersReported bool
}

// PutWith is Put with options; it also returns dhtd's holders figure.
func (c *Client) PutWith(ctx context.Context, key, value []byte, opts PutOptions, onEvent func(*dhtv1.QueryEvent)) (PutResult, error) {
	var res PutResult
	stream, err := c.DHT.Put(ctx, &dhtv1.PutRequest{
		Key: key, Value: value, BatchEvents: true, MinHolders: opts.MinHolders,
	})
	if err != nil {
		return res, err
	}
	res.Finals, err = drain(func() ([]labeled, error) {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		// The last message has no event and carries the holders; an eventless
		// message that is not the last is nothing.
		events := walkEvents(resp.GetEvents(), resp.GetEvent())
		res.Holders, res.HoldersReported = resp.GetHolders(), len(events) == 0
		return events, nil
	}, dropLabel(onEvent))
	return res, err
}

// Query walks towards peerID, passing every event to onEvent, if not nil, one
// call per event in stream order. It returns the closest peers found (the
// FINAL_PEER events), nearest first.
func (c *Client) Query(ctx context.Context, peerID string, onEvent func(*dhtv1.QueryEvent)) ([]string, error) {
	stream, err := c.DHT.Query(ctx, &dhtv1.QueryRequest{PeerId: peerID, BatchEvents: true})
	if err != nil {
		return nil, err
	}
	var closest []string
	_, err = drain(func() ([]labeled, error) {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		return walkEvents(resp.GetEvents(), resp.GetEvent()), nil
	}, func(_ string, ev *dhtv1.QueryEvent) {
		if ev.GetType() == dhtv1.QueryEventType_QUERY_EVENT_TYPE_FINAL_PEER {
			closest = append(closest, ev.GetId())
		}
		if onEvent != nil {
			onEvent(ev)
		}
	})
	return closest, err
}

func dropLabel(f func(*dhtv1.QueryEvent)) func(string, *dhtv1.QueryEvent) {
	if f == nil {
		return nil
	}
	return func(_ string, ev *dhtv1.QueryEvent) { f(ev) }
}

// labeled is one walk event and the CID it belongs to ("" outside Provide).
type labeled struct {
	cid string
	ev  *dhtv1.QueryEvent
}

// provideEvents is the events of one Provide response, in order, each with its
// CID: those in Events (dhtd honoured batch_events), else the single Event
// with Cid (an older dhtd that ignores it), else none.
func provideEvents(resp *dhtv1.ProvideResponse) []labeled {
	if batch := resp.GetEvents(); len(batch) > 0 {
		out := make([]labeled, len(batch))
		for i, e := range batch {
			out[i] = labeled{cid: e.GetCid(), ev: e.GetEvent()}
		}
		return out
	}
	if ev := resp.GetEvent(); ev != nil {
		return []labeled{{cid: resp.GetCid(), ev: ev}}
	}
	return nil
}

// walkEvents is the events of one Put or Query response, in order: batch
// (dhtd honoured batch_events), else single (an older dhtd that ignores it),
// else none.
func walkEvents(batch []*dhtv1.QueryEvent, single *dhtv1.QueryEvent) []labeled {
	if len(batch) > 0 {
		out := make([]labeled, len(batch))
		for i, ev := range batch {
			out[i] = labeled{ev: ev}
		}
		return out
	}
	if single != nil {
		return []labeled{{ev: single}}
	}
	return nil
}

// drain reads a stream to its end, one message per recv, and passes every
// event of every message to onEvent, if not nil, in order. It returns the
// number of FINAL_PEER events.
func drain(recv func() ([]labeled, error), onEvent func(string, *dhtv1.QueryEvent)) (int, error) {
	finals := 0
	for {
		events, err := recv()
		if errors.Is(err, io.EOF) {
			return finals, nil
		}
		if err != nil {
			return finals, err
		}
		for _, e := range events {
			if e.ev.GetType() == dhtv1.QueryEventType_QUERY_EVENT_TYPE_FINAL_PEER {
				finals++
			}
			if onEvent != nil {
				onEvent(e.cid, e.ev)
			}
		}
	}
}

// EventName is the short name of an event type: "FINAL_PEER", "QUERY_ERROR", ...
func EventName(t dhtv1.QueryEventType) string {
	return strings.TrimPrefix(t.String(), "QUERY_EVENT_TYPE_")
}

// RawCID is the CIDv1 (codec raw, sha2-256, base32) of data: the CID IPFS
// gives a single-block file.
func RawCID(data []byte) string {
	sum := sha256.Sum256(data)
	// version 1, codec raw (0x55), multihash sha2-256 (0x12) of 32 bytes.
	bin := append([]byte{0x01, 0x55, 0x12, 0x20}, sum[:]...)
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(bin)
	return "b" + strings.ToLower(enc)
}

// Explain turns an error from dhtd into one line saying what its gRPC status
// means for this API (see "Errors" in dhtd's README). Errors that carry no
// status are returned as they are.
func Explain(err error) string {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK {
		return err.Error()
	}
	msg := st.Message()
	switch st.Code() {
	case codes.InvalidArgument:
		return "invalid argument: " + msg
	case codes.NotFound:
		return "not found: " + msg + " (the DHT walk ended without a result)"
	case codes.DeadlineExceeded:
		return "deadline exceeded: " + msg + " (raise the deadline or dhtd's --query-timeout)"
	case codes.Unavailable:
		return "unavailable: " + msg + " (is dhtd running there, and does it have DHT peers?)"
	case codes.FailedPrecondition:
		return "failed precondition: " + msg
	case codes.ResourceExhausted:
		return "resource exhausted: " + msg + " (too many calls at once, or dhtd's disk is full)"
	case codes.DataLoss:
		return "data loss: " + msg + " (a block source served a block that does not hash to its CID)"
	case codes.Canceled:
		return "cancelled: " + msg
	case codes.Internal:
		return "internal error in dhtd: " + msg + " (a bug; its log has the traceback)"
	default:
		return fmt.Sprintf("%s: %s", st.Code(), msg)
	}
}
