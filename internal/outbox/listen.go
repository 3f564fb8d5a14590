package outbox

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Channel returns the Postgres notification channel of a domain, on which
// the tables' triggers notify after writing rows for a change made outside
// the library: "ghlcache_" + domain.
func Channel(domain string) string { return "ghlcache_" + domain }

// listen keeps a connection of its own LISTENing on the domain's channel
// and wakes the sweeper for every notification and after every
// (re)connection, since notifications sent while it was down are lost.
// A lost connection is redialled with backoff (ListenRetry doubling up to
// ListenRetryMax); while it is down the sweeper polls every IdleInterval
// as it always does. Every ListenKeepalive without a notification it pings
// the connection, so a peer that vanished without a word is noticed.
func (o *Outbox) listen() {
	defer o.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-o.stop
		cancel()
	}()
	retry := o.cfg.ListenRetry
	for {
		connected, err := o.listenOnce(ctx)
		o.listening.Store(false)
		if ctx.Err() != nil {
			return
		}
		o.listenDrops.Add(1)
		if !o.listenFailing.Swap(true) {
			o.log.Warn("outbox LISTEN connection lost; polling until it is back", "err", err)
		}
		if connected {
			retry = o.cfg.ListenRetry // it was up: the backoff is for failed dials
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
		retry = min(2*retry, o.cfg.ListenRetryMax)
	}
}

// listenOnce dials, LISTENs and waits for notifications until the
// connection fails or ctx ends; connected reports whether it got as far as
// LISTENing.
func (o *Outbox) listenOnce(ctx context.Context) (connected bool, _ error) {
	dctx, cancel := context.WithTimeout(ctx, o.cfg.ListenKeepalive)
	conn, err := pgx.ConnectConfig(dctx, o.pool.Config().ConnConfig.Copy())
	if err == nil {
		_, err = conn.Exec(dctx, "LISTEN "+pgx.Identifier{Channel(o.cfg.Domain)}.Sanitize())
	}
	cancel()
	if err != nil {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
		return false, err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	o.listening.Store(true)
	if o.listenFailing.Swap(false) {
		o.log.Info("outbox LISTEN connection back")
	}
	if o.listenDrops.Load() > 0 {
		// Notifications sent while nobody listened are lost. (The first
		// connection needs no sweep: the sweeper's first is due anyway.)
		o.wakeSweeper()
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, o.cfg.ListenKeepalive)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			o.notifications.Add(1)
			o.wakeSweeper()
			continue
		case ctx.Err() != nil:
			return true, ctx.Err()
		case conn.PgConn().IsClosed() || !pgconn.Timeout(err):
			return true, err
		}
		// ListenKeepalive without a notification: is the server still there?
		pctx, cancel := context.WithTimeout(ctx, o.cfg.ListenKeepalive)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return true, err
		}
	}
}

// wakeSweeper asks the sweeper for a sweep now (coalesced: one pending).
func (o *Outbox) wakeSweeper() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}
