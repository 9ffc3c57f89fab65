package dhtclient

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	dhtv1 "dhtd/clients/go/dht/v1"
)

func TestRawCID(t *testing.T) {
	cases := map[string]string{
		"":            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
		"hello world": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
	}
	for data, want := range cases {
		if got := RawCID([]byte(data)); got != want {
			t.Errorf("RawCID(%q) = %s, want %s", data, got, want)
		}
	}
}

func TestEventName(t *testing.T) {
	if got := EventName(dhtv1.QueryEventType_QUERY_EVENT_TYPE_DIALING_PEER); got != "DIALING_PEER" {
		t.Errorf("EventName(7) = %q", got)
	}
	if got := EventName(dhtv1.QueryEventType_QUERY_EVENT_TYPE_SENDING_QUERY); got != "SENDING_QUERY" {
		t.Errorf("EventName(0) = %q", got)
	}
}

func TestExplain(t *testing.T) {
	got := Explain(status.Error(codes.NotFound, "no provider"))
	if !strings.HasPrefix(got, "not found: no provider") {
		t.Errorf("Explain(NotFound) = %q", got)
	}
	got = Explain(status.Error(codes.InvalidArgument, "peer_id: bad"))
	if got != "invalid argument: peer_id: bad" {
		t.Errorf("Explain(InvalidArgument) = %q", got)
	}
	got = Explain(status.Error(codes.DataLoss, "bafy...: mismatch"))
	if !strings.HasPrefix(got, "data loss: bafy...: mismatch (a block source") {
		t.Errorf("Explain(DataLoss) = %q", got)
	}
	got = Explain(status.Error(codes.ResourceExhausted, "full"))
	if !strings.HasPrefix(got, "resource exhausted: full") {
		t.Errorf("Explain(ResourceExhausted) = %q", got)
	}
	if got := Explain(errors.New("plain")); got != "plain" {
		t.Errorf("Explain(plain) = %q", got)
	}
}
