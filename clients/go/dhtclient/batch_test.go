package dhtclient_test

// These tests run Provide, Put and Query against a fake DhtService on a
// loopback port in this process (no dhtd needed): the fake records each
// request and sends scripted response messages in both shapes, batched
// (Events) and one event per message (Event, as a dhtd that ignores
// batch_events sends them).

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	dhtv1 "dhtd/clients/go/dht/v1"
	"dhtd/clients/go/dhtclient"
)

func event(t dhtv1.QueryEventType, id, extra string, responses ...string) *dhtv1.QueryEvent {
	ev := &dhtv1.QueryEvent{Type: t, Id: id, Extra: extra}
	for _, r := range responses {
		ev.Responses = append(ev.Responses, &dhtv1.PeerInfo{Id: r, Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}})
	}
	return ev
}

var (
	evA = event(dhtv1.QueryEventType_QUERY_EVENT_TYPE_SENDING_QUERY, "12D3KooWA", "")
	evB = event(dhtv1.QueryEventType_QUERY_EVENT_TYPE_PEER_RESPONSE, "12D3KooWA", "", "12D3KooWPeer")
	evC = event(dhtv1.QueryEventType_QUERY_EVENT_TYPE_QUERY_ERROR, "12D3KooWB", "dial refused")
	evD = event(dhtv1.QueryEventType_QUERY_EVENT_TYPE_FINAL_PEER, "12D3KooWPeer", "", "12D3KooWPeer")
	evE = event(dhtv1.QueryEventType_QUERY_EVENT_TYPE_FINAL_PEER, "12D3KooWC", "", "12D3KooWC")
)

// describe is an event in one comparable line: "cid TYPE id extra [responses]".
func describe(cid string, ev *dhtv1.QueryEvent) string {
	var peers []string
	for _, p := range ev.GetResponses() {
		peers = append(peers, p.GetId()+"@"+strings.Join(p.GetAddrs(), ","))
	}
	return fmt.Sprintf("%s %s %s %q %v", cid, dhtclient.EventName(ev.GetType()), ev.GetId(), ev.GetExtra(), peers)
}

// The Put and Query streams of the fake: a batched message of three events, a
// single-event message, a message with neither (no event), and a batched
// message of two. In order that is A B C D E D, three of them FINAL_PEER.
var walkMessages = [][]*dhtv1.QueryEvent{{evA, evB, evC}, nil, {}, {evE, evD}}
var walkSingles = []*dhtv1.QueryEvent{nil, evD, nil, nil}
var wantWalk = []string{
	describe("", evA), describe("", evB), describe("", evC),
	describe("", evD), describe("", evE), describe("", evD),
}

// The Provide stream of the fake, in the same shapes; each event names its CID.
var provideMessages = []*dhtv1.ProvideResponse{
	{Events: []*dhtv1.ProvideEvent{{Cid: "cid-1", Event: evA}, {Cid: "cid-2", Event: evB}, {Cid: "cid-1", Event: evD}}},
	{Cid: "cid-2", Event: evC},
	{},
	{Events: []*dhtv1.ProvideEvent{{Cid: "cid-2", Event: evE}}},
}
var wantProvide = []string{
	describe("cid-1", evA), describe("cid-2", evB), describe("cid-1", evD),
	describe("cid-2", evC), describe("cid-2", evE),
}

// fakeDHT serves the scripted streams above and keeps every request it gets.
type fakeDHT struct {
	dhtv1.UnimplementedDhtServiceServer
	mu      sync.Mutex
	provide []*dhtv1.ProvideRequest
	put     []*dhtv1.PutRequest
	query   []*dhtv1.QueryRequest
	// holders: end Provide and Put with the eventless message that carries the
	// holders, as a dhtd with min_holders does.
	holders bool
}

func (f *fakeDHT) sendsHolders() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holders
}

func (f *fakeDHT) Provide(req *dhtv1.ProvideRequest, stream dhtv1.DhtService_ProvideServer) error {
	f.mu.Lock()
	f.provide = append(f.provide, req)
	f.mu.Unlock()
	for _, m := range provideMessages {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	if f.sendsHolders() {
		return stream.Send(&dhtv1.ProvideResponse{Holders: []*dhtv1.ProvideHolders{
			{Cid: "cid-1", Holders: 1}, {Cid: "cid-2", Holders: 1},
		}})
	}
	return nil
}

func (f *fakeDHT) Put(req *dhtv1.PutRequest, stream dhtv1.DhtService_PutServer) error {
	f.mu.Lock()
	f.put = append(f.put, req)
	f.mu.Unlock()
	for i := range walkMessages {
		if err := stream.Send(&dhtv1.PutResponse{Events: walkMessages[i], Event: walkSingles[i]}); err != nil {
			return err
		}
	}
	if f.sendsHolders() {
		return stream.Send(&dhtv1.PutResponse{Holders: 3})
	}
	return nil
}

func (f *fakeDHT) Query(req *dhtv1.QueryRequest, stream dhtv1.DhtService_QueryServer) error {
	f.mu.Lock()
	f.query = append(f.query, req)
	f.mu.Unlock()
	for i := range walkMessages {
		if err := stream.Send(&dhtv1.QueryResponse{Events: walkMessages[i], Event: walkSingles[i]}); err != nil {
			return err
		}
	}
	return nil
}

// requests returns the last Provide, Put and Query requests the fake got (nil
// for a method not called yet).
func (f *fakeDHT) requests() (*dhtv1.ProvideRequest, *dhtv1.PutRequest, *dhtv1.QueryRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var pr *dhtv1.ProvideRequest
	var pu *dhtv1.PutRequest
	var q *dhtv1.QueryRequest
	if n := len(f.provide); n > 0 {
		pr = f.provide[n-1]
	}
	if n := len(f.put); n > 0 {
		pu = f.put[n-1]
	}
	if n := len(f.query); n > 0 {
		q = f.query[n-1]
	}
	return pr, pu, q
}

// startFake serves a fakeDHT on a loopback port and returns it with a client
// dialled to it and a context bounded in time; all are closed at cleanup.
func startFake(t *testing.T) (*fakeDHT, *dhtclient.Client, context.Context) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeDHT{}
	srv := grpc.NewServer()
	dhtv1.RegisterDhtServiceServer(srv, fake)
	go srv.Serve(lis) // returns when srv.Stop closes lis
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	client, err := dhtclient.Dial(ctx, lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return fake, client, ctx
}

func wantEvents(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s events:\n got  %q\n want %q", what, got, want)
	}
}

func TestBatchEventsRequested(t *testing.T) {
	fake, client, ctx := startFake(t)
	if _, err := client.Provide(ctx, []string{"cid-1", "cid-2"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Put(ctx, []byte("/demo/k"), []byte("v"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Query(ctx, "12D3KooWTarget", nil); err != nil {
		t.Fatal(err)
	}
	provide, put, query := fake.requests()
	if !provide.GetBatchEvents() || !put.GetBatchEvents() || !query.GetBatchEvents() {
		t.Errorf("batch_events: Provide %v, Put %v, Query %v; want all true",
			provide.GetBatchEvents(), put.GetBatchEvents(), query.GetBatchEvents())
	}
	// The rest of each request is as before.
	if !reflect.DeepEqual(provide.GetCids(), []string{"cid-1", "cid-2"}) || provide.GetRecursive() {
		t.Errorf("ProvideRequest = %v", provide)
	}
	if string(put.GetKey()) != "/demo/k" || string(put.GetValue()) != "v" {
		t.Errorf("PutRequest = %v", put)
	}
	if query.GetPeerId() != "12D3KooWTarget" {
		t.Errorf("QueryRequest = %v", query)
	}
}

func TestProvideEventsInOrder(t *testing.T) {
	_, client, ctx := startFake(t)
	var got []string
	delivered, err := client.Provide(ctx, []string{"cid-1", "cid-2"}, func(cid string, ev *dhtv1.QueryEvent) {
		got = append(got, describe(cid, ev))
	})
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "Provide", got, wantProvide)
	if delivered != 2 {
		t.Errorf("Provide returned %d, want 2 (the FINAL_PEER events)", delivered)
	}
	// A nil callback still counts every event.
	if delivered, err := client.Provide(ctx, []string{"cid-1"}, nil); err != nil || delivered != 2 {
		t.Errorf("Provide without callback = %d, %v; want 2, nil", delivered, err)
	}
}

func TestPutEventsInOrder(t *testing.T) {
	_, client, ctx := startFake(t)
	var got []string
	stored, err := client.Put(ctx, []byte("/demo/k"), []byte("v"), func(ev *dhtv1.QueryEvent) {
		got = append(got, describe("", ev))
	})
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "Put", got, wantWalk)
	if stored != 3 {
		t.Errorf("Put returned %d, want 3 (the FINAL_PEER events)", stored)
	}
}

func TestQueryEventsInOrder(t *testing.T) {
	_, client, ctx := startFake(t)
	var got []string
	closest, err := client.Query(ctx, "12D3KooWTarget", func(ev *dhtv1.QueryEvent) {
		got = append(got, describe("", ev))
	})
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "Query", got, wantWalk)
	want := []string{evD.GetId(), evE.GetId(), evD.GetId()}
	if !reflect.DeepEqual(closest, want) {
		t.Errorf("Query closest = %v, want %v", closest, want)
	}
}

// Without the holders message (a dhtd older than min_holders, or the fake's
// eventless message in mid-stream), ProvideWith and PutWith report none.
func TestNoHoldersReported(t *testing.T) {
	_, client, ctx := startFake(t)
	pr, err := client.ProvideWith(ctx, []string{"cid-1", "cid-2"}, dhtclient.ProvideOptions{}, nil)
	if err != nil || pr.Finals != 2 || pr.Holders != nil {
		t.Errorf("ProvideWith = %+v, %v; want 2 finals, nil holders", pr, err)
	}
	pu, err := client.PutWith(ctx, []byte("/demo/k"), []byte("v"), dhtclient.PutOptions{}, nil)
	if err != nil || pu.Finals != 3 || pu.HoldersReported {
		t.Errorf("PutWith = %+v, %v; want 3 finals, holders not reported", pu, err)
	}
}

// min_holders reaches dhtd; the last, eventless message gives the holders and
// no event.
func TestMinHoldersAndHolders(t *testing.T) {
	fake, client, ctx := startFake(t)
	fake.mu.Lock()
	fake.holders = true
	fake.mu.Unlock()
	var got []string
	pr, err := client.ProvideWith(ctx, []string{"cid-1", "cid-2"},
		dhtclient.ProvideOptions{MinHolders: 7, Recursive: true},
		func(cid string, ev *dhtv1.QueryEvent) { got = append(got, describe(cid, ev)) })
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "ProvideWith", got, wantProvide)
	if pr.Finals != 2 || len(pr.Holders) != 2 || pr.Holders[0].GetCid() != "cid-1" ||
		pr.Holders[0].GetHolders() != 1 || pr.Holders[1].GetCid() != "cid-2" {
		t.Errorf("ProvideWith = %+v", pr)
	}
	got = nil
	pu, err := client.PutWith(ctx, []byte("/demo/k"), []byte("v"), dhtclient.PutOptions{MinHolders: 20},
		func(ev *dhtv1.QueryEvent) { got = append(got, describe("", ev)) })
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "PutWith", got, wantWalk)
	if pu.Finals != 3 || pu.Holders != 3 || !pu.HoldersReported {
		t.Errorf("PutWith = %+v; want 3 finals, 3 holders reported", pu)
	}
	// The old calls still count the FINAL_PEER events only.
	if n, err := client.Put(ctx, []byte("/demo/k"), []byte("v"), nil); err != nil || n != 3 {
		t.Errorf("Put = %d, %v; want 3, nil", n, err)
	}
	provide, put, _ := fake.requests()
	if provide.GetMinHolders() != 7 || !provide.GetRecursive() || put.GetMinHolders() != 0 {
		t.Errorf("min_holders: Provide %d (recursive %v), last Put %d; want 7 (true), 0",
			provide.GetMinHolders(), provide.GetRecursive(), put.GetMinHolders())
	}
	fake.mu.Lock()
	first := fake.put[0]
	fake.mu.Unlock()
	if first.GetMinHolders() != 20 {
		t.Errorf("PutWith sent min_holders %d, want 20", first.GetMinHolders())
	}
}
