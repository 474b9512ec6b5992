package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/syncd/syncd/server"
)

func status(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	addr := fs.String("http", "127.0.0.1:8080", "the region's HTTP address")
	token := fs.String("token", os.Getenv("SYNCD_TOKEN"), "bearer token (default $SYNCD_TOKEN)")
	raw := fs.Bool("json", false, "print the raw JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	url := *addr
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/status", nil)
	if err != nil {
		return err
	}
	if *token != "" {
		req.Header.Set("Authorization", "Bearer "+*token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reach region: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if *raw {
		os.Stdout.Write(body)
		return nil
	}
	var st server.StatusResponse
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("read status: %w", err)
	}
	printStatus(os.Stdout, st)
	return nil
}

func printStatus(w io.Writer, st server.StatusResponse) {
	fmt.Fprintf(w, "region %s  replica %s  hlc %s  devices %d", st.Node, st.Replica, st.HLC, st.Clients)
	if st.Isolated {
		fmt.Fprint(w, "  ISOLATED")
	}
	fmt.Fprintln(w)
	names := map[string]string{st.Replica.String(): st.Node}
	for _, p := range st.Peers {
		names[p.Replica.String()] = p.Node
	}
	nss := make([]string, 0, len(st.Namespaces))
	for ns := range st.Namespaces {
		nss = append(nss, ns)
	}
	slices.Sort(nss)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNAMESPACE\tVECTOR")
	for _, ns := range nss {
		var parts []string
		for id, n := range st.Namespaces[ns].Vector {
			name := names[id.String()]
			if name == "" {
				name = id.String()[:8]
			}
			parts = append(parts, fmt.Sprintf("%s:%d", name, n))
		}
		slices.Sort(parts)
		fmt.Fprintf(tw, "%s\t%s\n", ns, strings.Join(parts, " "))
	}
	tw.Flush()
	if len(st.Peers) == 0 {
		fmt.Fprintln(w, "\nno peers heard from")
		return
	}
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPEER\tNAMESPACE\tHEARD\tLAG (CHANGES)\tLAG (SECONDS)")
	for _, p := range st.Peers {
		fmt.Fprintf(tw, "%s\t%s\t%.1fs ago\t%d\t%.3f\n", p.Node, p.Namespace, p.LastHeartbeat, p.LagChanges, p.LagSeconds)
	}
	tw.Flush()
}
