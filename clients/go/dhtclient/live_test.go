package dhtclient_test

// These tests call a live dhtd at $DHTD_ADDR (skipped when unset) that has DHT
// peers and the /demo/ namespace open, e.g. `./dev run`. $DHTD_PEER is a peer
// ID the node can find (one of its dev peers).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	dhtv1 "dhtd/clients/go/dht/v1"
	"dhtd/clients/go/dhtclient"
)

// live dials $DHTD_ADDR and returns a client and a context bounded in time.
func live(t *testing.T) (*dhtclient.Client, context.Context) {
	t.Helper()
	addr := os.Getenv("DHTD_ADDR")
	if addr == "" {
		t.Skip("DHTD_ADDR is not set: no live dhtd to test against")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	client, err := dhtclient.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client, ctx
}

func devPeer(t *testing.T) string {
	t.Helper()
	peer := os.Getenv("DHTD_PEER")
	if peer == "" {
		t.Skip("DHTD_PEER is not set: no peer ID to look up")
	}
	return peer
}

// unique makes names that no earlier run used.
func unique(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

// wantStatus fails unless err carries the gRPC status code want, and returns its message.
func wantStatus(t *testing.T, err error, want codes.Code) string {
	t.Helper()
	st, ok := status.FromError(err)
	if err == nil || !ok || st.Code() != want {
		t.Fatalf("want status %s, got %v", want, err)
	}
	return st.Message()
}

func TestLiveInfo(t *testing.T) {
	client, ctx := live(t)
	info, err := client.Info(ctx)
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	if info.GetPeerId() == "" || len(info.GetAddrs()) == 0 {
		t.Errorf("info lacks peer ID or addrs: %v", info)
	}
	if info.GetMode() != dhtv1.Mode_MODE_SERVER {
		t.Errorf("mode = %s, want MODE_SERVER", info.GetMode())
	}
	if info.GetRoutingTableSize() < 1 {
		t.Errorf("routing table is empty")
	}
	if !strings.HasSuffix(info.GetProtocol(), "/kad/1.0.0") {
		t.Errorf("protocol = %q", info.GetProtocol())
	}
}

func TestLiveFindPeer(t *testing.T) {
	client, ctx := live(t)
	peer := devPeer(t)
	found, err := client.FindPeer(ctx, peer)
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	if found.GetId() != peer || len(found.GetAddrs()) == 0 {
		t.Errorf("FindPeer(%s) = %v", peer, found)
	}
}

func TestLiveProvideFindProvs(t *testing.T) {
	client, ctx := live(t)
	info, err := client.Info(ctx)
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	cid := dhtclient.RawCID([]byte(unique("go-provide")))
	delivered, err := client.Provide(ctx, []string{cid}, func(c string, ev *dhtv1.QueryEvent) {
		if c != cid {
			t.Errorf("event for CID %q, want %q", c, cid)
		}
	})
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	if delivered < 1 {
		t.Fatalf("Provide delivered to %d peers", delivered)
	}
	provs, err := client.FindProvs(ctx, cid, 1, nil)
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	if len(provs) != 1 || provs[0].GetId() != info.GetPeerId() {
		t.Errorf("FindProvs = %v, want this node %s", provs, info.GetPeerId())
	}
}

func TestLivePutGet(t *testing.T) {
	client, ctx := live(t)
	key := []byte("/demo/" + unique("go"))
	value := []byte("hello from Go")
	stored, err := client.Put(ctx, key, value, nil)
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	if stored < 1 {
		t.Fatalf("Put stored on %d peers", stored)
	}
	got, err := client.Get(ctx, key)
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	if string(got) != string(value) {
		t.Errorf("Get = %q, want %q", got, value)
	}
}

// With min_holders 20 every store is waited for: dhtd's holders figure is the
// number of FINAL_PEER events, per CID for Provide.
func TestLiveMinHolders(t *testing.T) {
	client, ctx := live(t)
	var finals int
	pu, err := client.PutWith(ctx, []byte("/demo/"+unique("go-holders")), []byte("v"),
		dhtclient.PutOptions{MinHolders: 20}, func(ev *dhtv1.QueryEvent) {
			if ev == nil || ev.GetId() == "" {
				t.Errorf("empty event %v", ev)
			}
			if ev.GetType() == dhtv1.QueryEventType_QUERY_EVENT_TYPE_FINAL_PEER {
				finals++
			}
		})
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	if !pu.HoldersReported || pu.Holders < 1 || int(pu.Holders) != finals || pu.Finals != finals {
		t.Errorf("PutWith = %+v, %d FINAL_PEER events", pu, finals)
	}
	cid := dhtclient.RawCID([]byte(unique("go-holders")))
	pr, err := client.ProvideWith(ctx, []string{cid}, dhtclient.ProvideOptions{MinHolders: 20}, nil)
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	if len(pr.Holders) != 1 || pr.Holders[0].GetCid() != cid || int(pr.Holders[0].GetHolders()) != pr.Finals || pr.Finals < 1 {
		t.Errorf("ProvideWith = %+v", pr)
	}
}

func TestLiveQuery(t *testing.T) {
	client, ctx := live(t)
	peer := devPeer(t)
	// The generated stream, read by hand.
	stream, err := client.DHT.Query(ctx, &dhtv1.QueryRequest{PeerId: peer})
	if err != nil {
		t.Fatal(dhtclient.Explain(err))
	}
	seen := map[dhtv1.QueryEventType]int{}
	var finals []string
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(dhtclient.Explain(err))
		}
		ev := resp.GetEvent()
		seen[ev.GetType()]++
		if ev.GetType() == dhtv1.QueryEventType_QUERY_EVENT_TYPE_FINAL_PEER {
			finals = append(finals, ev.GetId())
		}
	}
	t.Logf("events: %v", seen)
	if seen[dhtv1.QueryEventType_QUERY_EVENT_TYPE_SENDING_QUERY] == 0 ||
		seen[dhtv1.QueryEventType_QUERY_EVENT_TYPE_PEER_RESPONSE] == 0 {
		t.Errorf("no SENDING_QUERY/PEER_RESPONSE events: %v", seen)
	}
	if len(finals) == 0 || finals[0] != peer {
		t.Errorf("FINAL_PEER events %v, want %s first (the nearest)", finals, peer)
	}
}

func TestLiveNotFound(t *testing.T) {
	client, ctx := live(t)
	_, err := client.Get(ctx, []byte("/demo/"+unique("never-stored")))
	wantStatus(t, err, codes.NotFound)
}

func TestLiveInvalidArgument(t *testing.T) {
	client, ctx := live(t)
	t.Run("peer_id", func(t *testing.T) {
		_, err := client.FindPeer(ctx, "not-a-peer-id")
		if msg := wantStatus(t, err, codes.InvalidArgument); !strings.HasPrefix(msg, "peer_id:") {
			t.Errorf("message %q does not start with the field name", msg)
		}
	})
	t.Run("cids", func(t *testing.T) {
		_, err := client.Provide(ctx, []string{dhtclient.RawCID(nil), "not-a-cid"}, nil)
		if msg := wantStatus(t, err, codes.InvalidArgument); !strings.HasPrefix(msg, "cids[1]:") {
			t.Errorf("message %q does not start with the field name", msg)
		}
	})
	t.Run("key", func(t *testing.T) {
		_, err := client.Get(ctx, []byte("/nosuchnamespace/x"))
		if msg := wantStatus(t, err, codes.InvalidArgument); !strings.HasPrefix(msg, "key:") {
			t.Errorf("message %q does not start with the field name", msg)
		}
	})
}
