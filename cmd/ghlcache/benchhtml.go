package main

import (
	"fmt"
	"html/template"
	"io"
	"time"

	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
)

// barChart is one SVG chart of horizontal bars, in groups.
type barChart struct {
	Title  string
	Height int
	Bars   []bar
}

type bar struct {
	Y            int
	Width        float64 // px, scaled to the group's largest value
	Label, Value string
	Group        string // set on the first bar of a group
	Color        string
}

const (
	chartLabelWidth = 190
	chartBarWidth   = 520
	chartRowHeight  = 20
)

var systemColors = map[string]string{
	bench.FloorName:                "#999999",
	string(bench.KindPostgres):     "#336791",
	string(bench.KindNaive):        "#e69f00",
	string(bench.KindGoRedisCache): "#cc79a7",
	string(bench.KindGoRedisTiny):  "#d55e00",
	string(bench.KindGhlcache):     "#009e73",
	string(bench.KindGhlcacheWT):   "#56b4e9",
	string(bench.KindGhlcacheNear): "#0072b2",
}

// hitCharts turns the hit-heavy rows into a throughput and a latency chart,
// one group per concurrency.
func hitCharts(r *bench.Results) []barChart {
	type metric struct {
		title string
		value func(bench.HitRow) float64
		text  func(bench.HitRow) string
	}
	metrics := []metric{
		{"Hit-heavy reads/s (higher is better)", func(h bench.HitRow) float64 { return h.OpsPerSec },
			func(h bench.HitRow) string { return formatRate(h.OpsPerSec) }},
		{"Hit-heavy mean read latency (lower is better)", func(h bench.HitRow) float64 { return float64(h.Mean) },
			func(h bench.HitRow) string {
				return fmt.Sprintf("%s (%.2f× floor)", formatLatency(time.Duration(h.Mean)), h.VsFloor)
			}},
	}
	var charts []barChart
	for _, m := range metrics {
		c := barChart{Title: m.title}
		y := 0
		for i := 0; i < len(r.Hits); {
			g := r.Hits[i].Goroutines
			j := i
			top := 0.0
			for ; j < len(r.Hits) && r.Hits[j].Goroutines == g; j++ {
				top = max(top, m.value(r.Hits[j]))
			}
			y += chartRowHeight
			for k := i; k < j; k++ {
				h := r.Hits[k]
				b := bar{Y: y, Label: h.System, Value: m.text(h), Color: systemColors[h.System]}
				if k == i {
					b.Group = fmt.Sprintf("%d goroutines", g)
				}
				if top > 0 {
					b.Width = m.value(h) / top * chartBarWidth
				}
				c.Bars = append(c.Bars, b)
				y += chartRowHeight
			}
			i = j
		}
		c.Height = y + chartRowHeight
		charts = append(charts, c)
	}
	return charts
}

var benchPage = template.Must(template.New("bench").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ghlcache bench {{.R.Environment.Date}}</title>
<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}table{border-collapse:collapse}
td,th{padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>
<h1>ghlcache bench</h1>
<p>{{.R.Environment.Date}}, {{.R.Environment.Go}}, {{.R.Environment.CPUs}} CPUs, Redis {{.R.Environment.Redis}},
PostgreSQL {{.R.Environment.Postgres}}; {{.R.Settings.Users}} balances, {{.R.Settings.Rounds}} rounds of {{.R.Settings.Duration}}, medians.</p>
{{range .Charts}}<h2>{{.Title}}</h2>
<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{{.Height}}" font-size="12">
{{range .Bars}}{{if .Group}}<text x="0" y="{{.Y}}" dy="-6" font-weight="bold">{{.Group}}</text>{{end}}
<text x="0" y="{{.Y}}" dy="14">{{.Label}}</text>
<rect x="190" y="{{.Y}}" width="{{printf "%.1f" .Width}}" height="16" fill="{{.Color}}"/>
<text x="{{printf "%.1f" .Width}}" dx="196" y="{{.Y}}" dy="13">{{.Value}}</text>
{{end}}</svg>
{{end}}
<h2>Cold-key stampede ({{.R.Settings.StampedeGoroutines}} readers): Postgres queries</h2>
<table><tr><th>system</th><th>instances</th><th>median</th><th>worst</th></tr>
{{range .R.Stampedes}}<tr><td>{{.System}}</td><td>{{.Instances}}</td><td>{{.Queries}}</td><td>{{.MaxQueries}}</td></tr>
{{end}}</table>
<h2>Staleness probe: keys stale after quiescence</h2>
<table><tr><th>system</th><th>stale keys</th><th>worst</th><th>keys written</th></tr>
{{range .R.Staleness}}<tr><td>{{.System}}</td><td>{{.StaleKeys}}</td><td>{{.MaxStale}}</td><td>{{.Written}}</td></tr>
{{end}}</table>
</body></html>
`))

// renderBenchHTML writes the results page to w.
func renderBenchHTML(w io.Writer, r *bench.Results) error {
	return benchPage.Execute(w, struct {
		R      *bench.Results
		Charts []barChart
	}{r, hitCharts(r)})
}
