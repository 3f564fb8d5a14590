package outbox

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// statsTimeout bounds the query behind the outbox gauges at each
// collection.
const statsTimeout = time.Second

// registerGauges reports the domain's outbox through mp (nothing when mp is
// nil), each time a reader collects:
//
//	ghlcache.outbox.depth       gauge {row} rows waiting for their key's delete (all instances; one query per collection)
//	ghlcache.outbox.oldest_age  gauge s     age of the oldest waiting row, 0 when none
//	ghlcache.outbox.pending     gauge {key} keys whose invalidation this process still waits for (no query)
//
// each with ghlcache.domain. A failed query reports the pending keys only.
func (o *Outbox) registerGauges(mp metric.MeterProvider) error {
	if mp == nil {
		return nil
	}
	m := mp.Meter("github.com/ghl-agency/ghlcache/outbox")
	depth, err1 := m.Int64ObservableGauge("ghlcache.outbox.depth", metric.WithUnit("{row}"),
		metric.WithDescription("Outbox rows waiting for their key's delete"))
	age, err2 := m.Float64ObservableGauge("ghlcache.outbox.oldest_age", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest waiting outbox row"))
	pending, err3 := m.Int64ObservableGauge("ghlcache.outbox.pending", metric.WithUnit("{key}"),
		metric.WithDescription("Keys whose invalidation this process still waits for"))
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(attribute.String("ghlcache.domain", o.cfg.Domain)))
	reg, err := m.RegisterCallback(func(ctx context.Context, obs metric.Observer) error {
		obs.ObserveInt64(pending, int64(o.npend.Load()), attrs)
		sctx, cancel := context.WithTimeout(ctx, statsTimeout)
		defer cancel()
		st, err := o.Stats(sctx)
		if err != nil {
			return err
		}
		obs.ObserveInt64(depth, st.Depth, attrs)
		obs.ObserveFloat64(age, st.OldestAge.Seconds(), attrs)
		return nil
	}, depth, age, pending)
	if err != nil {
		return err
	}
	o.gauges = reg
	return nil
}
