// Command dhtd-example walks through the dhtd API once: Info, a Query towards
// one of the node's peers, Provide of a CID, then FindProvs of that CID.
//
//	dhtd-example [CID]
//
// It dials DHTD_ADDR (default 127.0.0.1:50051). On an error it prints what
// the gRPC status means and exits 1 (2 for bad usage).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	dhtv1 "dhtd/clients/go/dht/v1"
	"dhtd/clients/go/dhtclient"
)

// defaultCID is the CID used when none is given (the one in dhtd's README).
const defaultCID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"

func main() {
	if len(os.Args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: dhtd-example [CID]")
		os.Exit(2)
	}
	cid := defaultCID
	if len(os.Args) == 2 {
		cid = os.Args[1]
	}
	addr := os.Getenv("DHTD_ADDR")
	if addr == "" {
		addr = dhtclient.DefaultAddr
	}
	if err := run(addr, cid); err != nil {
		fmt.Fprintf(os.Stderr, "dhtd-example: %v\n", err)
		os.Exit(1)
	}
}

// step runs one call with its own deadline, labelling its error.
func step(name string, timeout time.Duration, call func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := call(ctx); err != nil {
		return fmt.Errorf("%s: %s", name, dhtclient.Explain(err))
	}
	return nil
}

func run(addr, cid string) error {
	client, err := dhtclient.Dial(context.Background(), addr)
	if err != nil {
		return err
	}
	defer client.Close()

	var info *dhtv1.InfoResponse
	err = step("Info", 5*time.Second, func(ctx context.Context) (err error) {
		info, err = client.Info(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("%w (DHTD_ADDR=%s)", err, addr)
	}
	fmt.Printf("info: peer %s, %s, %s, routing table %d, version %s\n",
		info.GetPeerId(), info.GetMode(), info.GetProtocol(), info.GetRoutingTableSize(), info.GetVersion())

	// A Query towards this node's own ID is a routing-table refresh: it reaches
	// every peer the node knows of.
	err = step("Query", 30*time.Second, func(ctx context.Context) error {
		closest, err := client.Query(ctx, info.GetPeerId(), func(ev *dhtv1.QueryEvent) {
			fmt.Printf("query event: %s %s\n", dhtclient.EventName(ev.GetType()), ev.GetId())
		})
		fmt.Printf("query: %d closest peers\n", len(closest))
		return err
	})
	if err != nil {
		return err
	}

	err = step("Provide", 30*time.Second, func(ctx context.Context) error {
		delivered, err := client.Provide(ctx, []string{cid}, func(c string, ev *dhtv1.QueryEvent) {
			fmt.Printf("provide event: %s %s (%s)\n", dhtclient.EventName(ev.GetType()), ev.GetId(), c)
		})
		fmt.Printf("provide: %s announced to %d peers\n", cid, delivered)
		return err
	})
	if err != nil {
		return err
	}

	return step("FindProvs", 30*time.Second, func(ctx context.Context) error {
		provs, err := client.FindProvs(ctx, cid, 1, func(p *dhtv1.PeerInfo) {
			fmt.Printf("provider: %s %v\n", p.GetId(), p.GetAddrs())
		})
		fmt.Printf("findprovs: %d providers of %s\n", len(provs), cid)
		return err
	})
}
