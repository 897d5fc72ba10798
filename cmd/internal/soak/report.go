package soak

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// WriteSummary prints the report as text tables: a side-by-side
// comparison first if there was a direct run, then the figures, criteria,
// events and the first failures of each run.
func (r *Report) WriteSummary(w io.Writer) {
	if r.Direct != nil {
		r.writeComparison(w)
		fmt.Fprintln(w, "== without baton, straight to the servers ==")
		r.Direct.writeRun(w)
		fmt.Fprintln(w, "== through baton ==")
	}
	r.writeRun(w)
	for _, c := range r.Criteria {
		res := "ok"
		if !c.OK {
			res = "FAILED"
		}
		fmt.Fprintf(w, "criterion %s <= %s: %s (%s) %s\n", c.Name, c.Limit, c.Value, c.Detail, res)
	}
	if r.MaxRSS > 0 {
		fmt.Fprintf(w, "soak process peak RSS: %.1f MB\n", float64(r.MaxRSS)/(1<<20))
	}
	if r.Passed() {
		fmt.Fprintln(w, "PASS: every criterion held and no event failed")
	} else {
		fmt.Fprintln(w, "FAIL")
	}
}

func (r *Report) writeComparison(w io.Writer) {
	d := r.Direct
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "same load, same events\twithout baton\tthrough baton")
	fmt.Fprintf(tw, "requests\t%d\t%d\n", d.Requests, r.Requests)
	fmt.Fprintf(tw, "FAILED requests\t%d\t%d\n", d.Failed, r.Failed)
	fmt.Fprintf(tw, "  by kind\t%s\t%s\n", kindsText(d.ByKind), kindsText(r.ByKind))
	fmt.Fprintf(tw, "latency p50 / p99 / max (ms)\t%.2f / %.2f / %.2f\t%.2f / %.2f / %.2f\n",
		d.Latency.P50, d.Latency.P99, d.Latency.Max, r.Latency.P50, r.Latency.P99, r.Latency.Max)
	fmt.Fprintf(tw, "events\t%s\t%s\n", eventsText(d.Events), eventsText(r.Events))
	tw.Flush()
	fmt.Fprintln(w)
}

func eventsText(es []Event) string {
	var names []string
	for _, e := range es {
		switch {
		case e.Skipped:
			names = append(names, e.Name()+" (skipped)")
		case !e.OK:
			names = append(names, e.Name()+" (FAILED)")
		default:
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func (r *Report) writeRun(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "targets\t%s\n", strings.Join(r.Targets, ", "))
	fmt.Fprintf(tw, "duration\t%s (rate %s, achieved %.0f req/s)\n", r.Duration.Round(time.Millisecond), rateText(r.Rate, r.RampTo, r.Workers), r.Achieved)
	if r.Interrupted {
		fmt.Fprintf(tw, "interrupted\tyes\n")
	}
	fmt.Fprintf(tw, "requests\t%d\n", r.Requests)
	fmt.Fprintf(tw, "succeeded\t%d\n", r.OK)
	fmt.Fprintf(tw, "failed\t%d\n", r.Failed)
	for _, k := range sortedKeys(r.ByKind) {
		fmt.Fprintf(tw, "  %s\t%d\n", k, r.ByKind[k])
	}
	if r.Hold.Known {
		fmt.Fprintf(tw, "held by baton\t%d requests, longest %s, %d hold timeouts\n", r.Hold.Held, r.Hold.Max.Round(time.Millisecond), r.Hold.Timeouts)
	}
	tw.Flush()
	r.WebSockets.writeSummary(w)
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "latency (ms)\trequests\tp50\tp90\tp99\tmax\t")
	for _, row := range []struct {
		name string
		l    Latencies
	}{{"overall", r.Latency}, {"within 1s of events", r.NearEvents}} {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t\n", row.name, row.l.Count, row.l.P50, row.l.P90, row.l.P99, row.l.Max)
	}
	tw.Flush()
	fmt.Fprintln(w)
	if len(r.Events) > 0 {
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "event\tat\ttook\tresult\tdetail")
		for _, e := range r.Events {
			fmt.Fprintf(tw, "%s\t%.1fs\t%s\t%s\t%s\n", e.Name(), e.Start.Sub(r.Start).Seconds(), e.Duration().Round(time.Millisecond), e.result(), e.Detail)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	r.writeRamps(w)
	for i, f := range r.Failures {
		if i == 10 {
			fmt.Fprintf(w, "... and %d more failures\n", r.Failed-10)
			break
		}
		fmt.Fprintf(w, "failure at %.3fs: %s: %s (%s)\n", f.At, f.Kind, f.Error, f.URL)
	}
	if len(r.Failures) > 0 {
		fmt.Fprintln(w)
	}
}

// Outcome is ok, FAILED or skipped.
func (e Event) Outcome() string { return e.result() }

func (e Event) result() string {
	switch {
	case e.Skipped:
		return "skipped"
	case !e.OK:
		return "FAILED"
	}
	return "ok"
}

func rateText(rate, rampTo, workers int) string {
	switch {
	case rate == 0:
		return fmt.Sprintf("max with %d workers", workers)
	case rampTo > 0:
		return fmt.Sprintf("%d/s rising to %d/s", rate, rampTo)
	}
	return fmt.Sprintf("%d/s", rate)
}

func sortedKeys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// WriteJSON writes the report's raw figures.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// chart geometry, in SVG user units.
const (
	chartW, chartH = 1000, 260
	padL, padR     = 60, 20
	padT, padB     = 20, 40
)

type point struct{ X, Y float64 }

type marker struct {
	X1, X2  float64
	Label   string
	Title   string
	Failed  bool
	Skipped bool
}

// markerLabels are the short names of events on the charts.
var markerLabels = map[string]string{
	KindUpgrade: "U", KindRestart: "R", KindRestartAll: "R all", KindDrain: "D", KindUndrain: "UD",
	KindKill: "K", KindCommand: "C",
}

type chart struct {
	Title   string
	YLabel  string
	Series  []series
	Bars    []bar
	Markers []marker
	XTicks  []tick
	YTicks  []tick
	Fails   []float64 // x positions of failed requests
	Labels  []label
	W, H    float64
	Top     float64
	Bottom  float64
}

type series struct {
	Name, Color string
	Points      string // "x,y x,y"
}

type bar struct {
	X, Y, W, H float64
	Color      string
	Title      string
}

type label struct {
	X, Y float64
	Text string
}

type tick struct {
	Pos   float64
	Label string
}

func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// axes maps seconds to x over secs (at least the run's duration, so two
// runs drawn side by side can share an axis).
func (r *Report) axes(secs float64) (xOf func(float64) float64, xTicks []tick) {
	secs = math.Max(math.Max(secs, r.Duration.Seconds()), 1)
	xOf = func(s float64) float64 { return padL + s/secs*(chartW-padL-padR) }
	step := niceMax(secs / 10)
	for s := 0.0; s <= secs+1e-9; s += step {
		xTicks = append(xTicks, tick{xOf(s), fmt.Sprintf("%gs", s)})
	}
	return xOf, xTicks
}

func (r *Report) markers(xOf func(float64) float64) []marker {
	var out []marker
	for _, e := range r.Events {
		x1 := xOf(e.Start.Sub(r.Start).Seconds())
		x2 := math.Max(xOf(e.End.Sub(r.Start).Seconds()), x1+2)
		label := markerLabels[e.Kind]
		if e.Target != "" {
			label += " " + e.Target
		}
		if e.Skipped {
			label += " (n/a)"
		}
		out = append(out, marker{X1: x1, X2: x2, Label: label, Failed: !e.OK, Skipped: e.Skipped,
			Title: fmt.Sprintf("%s at %.2fs, %s, %s: %s", e.Name(), e.Start.Sub(r.Start).Seconds(), e.Duration().Round(time.Millisecond), e.result(), e.Detail)})
	}
	return out
}

// latencyMax is the largest per-second max latency, in ms.
func (r *Report) latencyMax() float64 {
	var m float64
	for _, s := range r.Seconds {
		m = math.Max(m, s.Max)
	}
	return m
}

// rateMax is the most requests started in one second.
func (r *Report) rateMax() float64 {
	var m float64
	for _, s := range r.Seconds {
		m = math.Max(m, float64(s.OK+s.Failed))
	}
	return m
}

// latencyChart draws p50, p99 and max per second, the y axis up to at
// least ymax ms and the x axis over at least secs.
func (r *Report) latencyChart(secs, ymax float64) chart {
	xOf, xTicks := r.axes(secs)
	ymax = niceMax(math.Max(ymax, r.latencyMax()))
	yOf := func(ms float64) float64 { return chartH - padB - ms/ymax*(chartH-padT-padB) }
	c := chart{Title: "Latency per second (ms): p50, p99, max", YLabel: "ms", XTicks: xTicks, W: chartW, H: chartH, Top: padT, Bottom: chartH - padB}
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		c.YTicks = append(c.YTicks, tick{yOf(v), fmt.Sprintf("%g", math.Round(v*100)/100)})
	}
	for _, sr := range []struct {
		name, color string
		val         func(Second) float64
	}{
		{"max", "#c8c8c8", func(s Second) float64 { return s.Max }},
		{"p99", "#e69f00", func(s Second) float64 { return s.P99 }},
		{"p50", "#0072b2", func(s Second) float64 { return s.P50 }},
	} {
		var pts []string
		for _, s := range r.Seconds {
			if s.OK+s.Failed == 0 {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(float64(s.T)+0.5), yOf(sr.val(s))))
		}
		c.Series = append(c.Series, series{Name: sr.name, Color: sr.color, Points: strings.Join(pts, " ")})
	}
	for _, f := range r.Failures {
		c.Fails = append(c.Fails, xOf(f.At))
	}
	c.Markers = r.markers(xOf)
	return c
}

// throughputChart draws requests per second, failed ones in red and
// counted above their bar.
func (r *Report) throughputChart(secs, ymax float64) chart {
	xOf, xTicks := r.axes(secs)
	secs = math.Max(math.Max(secs, r.Duration.Seconds()), 1)
	ymax = niceMax(math.Max(ymax, r.rateMax()))
	yOf := func(n float64) float64 { return chartH - padB - n/ymax*(chartH-padT-padB) }
	c := chart{Title: "Requests per second: succeeded (blue), failed (red)", YLabel: "req/s", XTicks: xTicks, W: chartW, H: chartH, Top: padT, Bottom: chartH - padB}
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		c.YTicks = append(c.YTicks, tick{yOf(v), fmt.Sprintf("%.0f", v)})
	}
	bw := (chartW - padL - padR) / secs * 0.8
	for _, s := range r.Seconds {
		x := xOf(float64(s.T)) + bw*0.1
		okTop := yOf(float64(s.OK))
		c.Bars = append(c.Bars, bar{X: x, Y: okTop, W: bw, H: chartH - padB - okTop, Color: "#56b4e9",
			Title: fmt.Sprintf("t=%ds: %d ok, %d failed, p99 %.2fms", s.T, s.OK, s.Failed, s.P99)})
		if s.Failed > 0 {
			fTop := yOf(float64(s.OK + s.Failed))
			c.Bars = append(c.Bars, bar{X: x, Y: fTop, W: bw, H: math.Max(okTop-fTop, 2), Color: "#d55e00",
				Title: fmt.Sprintf("t=%ds: %d failed", s.T, s.Failed)})
			c.Labels = append(c.Labels, label{X: x + bw/2, Y: fTop - 3, Text: fmt.Sprint(s.Failed)})
		}
	}
	for _, f := range r.Failures {
		c.Fails = append(c.Fails, xOf(f.At))
	}
	c.Markers = r.markers(xOf)
	return c
}

// runView is one run as the HTML template shows it.
type runView struct {
	R       *Report
	Title   string
	Rate    string
	Charts  []chart
	Skipped int
}

// reportTmpl is parsed on first use, not at start-up: baton run never needs it.
var reportTmpl = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("report").Funcs(template.FuncMap{
		"ms": func(d time.Duration) string { return d.Round(time.Millisecond).String() },
		"since": func(r *Report, t time.Time) string {
			return fmt.Sprintf("%.2fs", t.Sub(r.Start).Seconds())
		},
		"sub":   func(a, b float64) float64 { return a - b },
		"kinds": kindsText,
	}).Parse(`{{define "chart"}}<h3>{{.Title}}</h3>
<svg viewBox="0 0 {{.W}} {{.H}}" width="100%" role="img" aria-label="{{.Title}}">
{{range .YTicks}}<line class="grid" x1="60" x2="980" y1="{{.Pos}}" y2="{{.Pos}}"/><text x="54" y="{{.Pos}}" text-anchor="end" dominant-baseline="middle">{{.Label}}</text>
{{end}}{{$c := .}}{{range .XTicks}}<text x="{{.Pos}}" y="{{$c.H}}" dy="-22" text-anchor="middle">{{.Label}}</text>
{{end}}{{range .Markers}}<rect class="{{if .Skipped}}evskip{{else if .Failed}}evfail{{else}}ev{{end}} event-marker" x="{{.X1}}" y="{{$c.Top}}" width="{{sub .X2 .X1}}" height="{{sub $c.Bottom $c.Top}}"><title>{{.Title}}</title></rect><text class="evlabel" x="{{.X1}}" y="{{$c.Top}}" dy="-5">{{.Label}}</text>
{{end}}{{range .Bars}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{.Color}}"><title>{{.Title}}</title></rect>
{{end}}{{range .Series}}<polyline fill="none" stroke="{{.Color}}" stroke-width="1.6" points="{{.Points}}"><title>{{.Name}}</title></polyline>
{{end}}{{range .Labels}}<text class="faillabel" x="{{.X}}" y="{{.Y}}" text-anchor="middle">{{.Text}}</text>
{{end}}{{range .Fails}}<rect class="failure" x="{{.}}" y="{{$c.Bottom}}" width="2" height="8" fill="#d00"><title>failed request</title></rect>
{{end}}<line class="axis" x1="60" x2="980" y1="{{.Bottom}}" y2="{{.Bottom}}"/><line class="axis" x1="60" x2="60" y1="{{.Top}}" y2="{{.Bottom}}"/>
</svg>
{{if .Series}}<p class="legend">{{range .Series}}<span style="color:{{.Color}}">&#9632;</span> {{.Name}} &nbsp; {{end}}</p>{{end}}
{{end}}
{{define "run"}}<h2>{{.Title}}</h2>
<p class="meta">{{range .R.Targets}}<code>{{.}}</code> {{end}}<br>
ran {{ms .R.Duration}}{{if .R.Interrupted}} (interrupted){{end}}, rate {{.Rate}}, achieved {{printf "%.0f" .R.Achieved}} req/s;
{{.R.Requests}} requests, <b{{if .R.Failed}} class="fail"{{else}} class="pass"{{end}}>{{.R.Failed}} failed</b>{{if .R.ByKind}} ({{kinds .R.ByKind}}){{end}}.
{{if .R.Hold.Known}}baton held {{.R.Hold.Held}} requests, the longest {{ms .R.Hold.Max}}.{{end}}</p>
{{range .Charts}}{{template "chart" .}}{{end}}
<table>
<tr><th class="l">latency (ms)</th><th>requests</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>
<tr><td class="l">overall</td><td>{{.R.Latency.Count}}</td><td>{{printf "%.2f" .R.Latency.P50}}</td><td>{{printf "%.2f" .R.Latency.P90}}</td><td>{{printf "%.2f" .R.Latency.P99}}</td><td>{{printf "%.2f" .R.Latency.Max}}</td></tr>
<tr><td class="l">seconds within 1 s of events</td><td>{{.R.NearEvents.Count}}</td><td>{{printf "%.2f" .R.NearEvents.P50}}</td><td>{{printf "%.2f" .R.NearEvents.P90}}</td><td>{{printf "%.2f" .R.NearEvents.P99}}</td><td>{{printf "%.2f" .R.NearEvents.Max}}</td></tr>
</table>
<table><tr><th class="l">event</th><th>at</th><th>took</th><th class="l">result</th><th class="l">detail</th></tr>
{{range .R.Events}}<tr><td class="l">{{.Name}}</td><td>{{since $.R .Start}}</td><td>{{ms .Duration}}</td><td class="l{{if not .OK}} fail{{end}}">{{.Outcome}}</td><td class="l detail">{{.Detail}}</td></tr>
{{else}}<tr><td class="l" colspan="5">no events</td></tr>{{end}}</table>
{{if .R.Failures}}<details><summary>Failed requests (first {{len .R.Failures}} of {{.R.Failed}})</summary>
<table><tr><th>at</th><th class="l">kind</th><th class="l">error</th><th class="l">url</th></tr>
{{range .R.Failures}}<tr><td>{{printf "%.3fs" .At}}</td><td class="l">{{.Kind}}</td><td class="l">{{.Error}}</td><td class="l">{{.URL}}</td></tr>
{{end}}</table></details>{{end}}
{{end}}<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>baton soak: {{if .R.Passed}}PASS{{else}}FAIL{{end}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;color:#222;max-width:1100px;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.25em;margin-top:2em;border-bottom:2px solid #ddd;padding-bottom:.2em} h3{font-size:1em;margin:1.2em 0 .3em}
.pass{color:#007a3d} .fail{color:#c0392b}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f4f4f4} td.l,th.l{text-align:left} td.detail{font-size:12px;color:#555;max-width:560px}
table.vs{font-size:15px;min-width:70%} table.vs td,table.vs th{padding:6px 14px} table.vs td.big{font-size:26px;font-weight:600}
svg{background:#fff;border:1px solid #ddd}
.axis{stroke:#888;stroke-width:1} .grid{stroke:#eee;stroke-width:1}
text{font-size:11px;fill:#555}
.ev{fill:#7b61ff;fill-opacity:.16;stroke:#7b61ff;stroke-opacity:.6}
.evfail{fill:#d55e00;fill-opacity:.35;stroke:#d55e00}
.evskip{fill:#999;fill-opacity:.08;stroke:#999;stroke-dasharray:3 3}
.evlabel{fill:#4b3bbf;font-size:10px} .faillabel{fill:#c0392b;font-size:10px;font-weight:600}
.legend,.meta{color:#444} .note{color:#555;font-size:13px}
</style></head><body>
<h1>baton soak — {{if .R.Passed}}<span class="pass">PASS</span>{{else}}<span class="fail">FAIL</span>{{end}}</h1>
{{if .D}}<p>The same load and the same events, run twice: first <b>straight to the servers</b>, restarted the usual way
(Apache graceful, lighttpd stop-start: what an operator does today), then <b>through baton</b>.</p>
<table class="vs">
<tr><th class="l"></th><th>without baton</th><th>through baton</th></tr>
<tr><th class="l">failed requests</th><td class="big{{if .D.R.Failed}} fail{{else}} pass{{end}}">{{.D.R.Failed}}</td><td class="big{{if .R.Failed}} fail{{else}} pass{{end}}">{{.R.Failed}}</td></tr>
<tr><th class="l">of requests</th><td>{{.D.R.Requests}}</td><td>{{.R.Requests}}</td></tr>
<tr><th class="l">failures by kind</th><td>{{kinds .D.R.ByKind}}</td><td>{{kinds .R.ByKind}}</td></tr>
<tr><th class="l">latency p50 / p99 / max</th><td>{{printf "%.1f / %.1f / %.0f ms" .D.R.Latency.P50 .D.R.Latency.P99 .D.R.Latency.Max}}</td><td>{{printf "%.1f / %.1f / %.0f ms" .R.Latency.P50 .R.Latency.P99 .R.Latency.Max}}</td></tr>
<tr><th class="l">events</th><td>{{len .D.R.Events}} ({{.D.Skipped}} with nothing to do without baton)</td><td>{{len .R.Events}}</td></tr>
</table>
<p class="note">Charts of both runs share their axes. Shaded bands are events from request to outcome
(U upgrade, R restart, D drain, UD undrain, K kill -9, C command; dashed: nothing to do without baton); red numbers and ticks are failed requests.</p>
{{template "run" .D}}{{end}}
{{template "run" .B}}
<h2>Pass criteria</h2>
<table><tr><th class="l">criterion</th><th>limit</th><th>value</th><th class="l">result</th><th class="l">detail</th></tr>
{{range .R.Criteria}}<tr><td class="l">{{.Name}}</td><td>{{.Limit}}</td><td>{{.Value}}</td><td class="l {{if .OK}}pass{{else}}fail{{end}}">{{if .OK}}ok{{else}}FAILED{{end}}</td><td class="l detail">{{.Detail}}</td></tr>
{{end}}</table>
<p class="note">started {{.R.Start.Format "2006-01-02 15:04:05 MST"}}; report schema {{.R.Schema}}{{if .R.MaxRSS}}; the soak's peak RSS {{printf "%.1f" .RSS}} MB{{end}}.</p>
</body></html>
`))
})

// WriteHTML writes a self-contained HTML page: charts drawn as inline SVG,
// event markers on the time axis, failures in red, the criteria, and with
// a direct run, both runs side by side on shared axes.
func (r *Report) WriteHTML(w io.Writer) error {
	secs, lat, rate := r.Duration.Seconds(), r.latencyMax(), r.rateMax()
	if r.Direct != nil {
		secs = math.Max(secs, r.Direct.Duration.Seconds())
		lat, rate = math.Max(lat, r.Direct.latencyMax()), math.Max(rate, r.Direct.rateMax())
	}
	view := func(x *Report, title string) *runView {
		v := &runView{R: x, Title: title, Rate: rateText(x.Rate, x.RampTo, x.Workers),
			Charts: []chart{x.throughputChart(secs, rate), x.latencyChart(secs, lat)}}
		for _, e := range x.Events {
			if e.Skipped {
				v.Skipped++
			}
		}
		return v
	}
	data := map[string]any{"R": r, "RSS": float64(r.MaxRSS) / (1 << 20), "D": (*runView)(nil)}
	if r.Direct != nil {
		data["D"] = view(r.Direct, "Without baton: straight to the servers")
		data["B"] = view(r, "Through baton")
	} else {
		data["B"] = view(r, "Through baton")
	}
	return reportTmpl().Execute(w, data)
}

// writeRamps prints requests per second per backend around each restart
// (from 2 s before to 12 s after it ended), where a slow start shows.
func (r *Report) writeRamps(w io.Writer) {
	if len(r.BackendRates) == 0 {
		return
	}
	for _, e := range r.Events {
		if e.Kind != "restart" && e.Kind != "restart-all" {
			continue
		}
		from := max(int(e.Start.Sub(r.Start).Seconds())-2, 0)
		to := min(int(math.Ceil(e.End.Sub(r.Start).Seconds()))+12, len(r.BackendRates[0].PerSecond))
		if from >= to {
			continue
		}
		fmt.Fprintf(w, "requests per second per backend around %s (%.1fs to %.1fs):\n", e.Name(),
			e.Start.Sub(r.Start).Seconds(), e.End.Sub(r.Start).Seconds())
		tw := tabwriter.NewWriter(w, 2, 4, 1, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "second\t")
		for t := from; t < to; t++ {
			fmt.Fprintf(tw, "%d\t", t)
		}
		fmt.Fprintln(tw)
		for _, b := range r.BackendRates {
			fmt.Fprintf(tw, "%s\t", b.Backend)
			for t := from; t < to; t++ {
				fmt.Fprintf(tw, "%d\t", b.PerSecond[t])
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
}
