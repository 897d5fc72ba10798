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

// WriteSummary prints the report as text tables.
func (r *Report) WriteSummary(w io.Writer) {
	verdict := "PASS: no request and no event failed"
	if !r.Passed() {
		verdict = "FAIL"
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "targets\t%s\n", strings.Join(r.Targets, ", "))
	fmt.Fprintf(tw, "duration\t%s (rate %s, achieved %.0f req/s)\n", r.Duration.Round(time.Millisecond), rateText(r.Rate, r.Workers), r.Achieved)
	fmt.Fprintf(tw, "requests\t%d\n", r.Requests)
	fmt.Fprintf(tw, "succeeded\t%d\n", r.OK)
	fmt.Fprintf(tw, "failed\t%d\n", r.Failed)
	for _, k := range sortedKeys(r.ByKind) {
		fmt.Fprintf(tw, "  %s\t%d\n", k, r.ByKind[k])
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
			res := "ok"
			if !e.OK {
				res = "FAILED"
			}
			name := e.Kind
			if e.Target != "" {
				name += " " + e.Target
			}
			fmt.Fprintf(tw, "%s\t%.1fs\t%s\t%s\t%s\n", name, e.Start.Sub(r.Start).Seconds(), e.Duration().Round(time.Millisecond), res, e.Detail)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	for i, f := range r.Failures {
		if i == 10 {
			fmt.Fprintf(w, "... and %d more failures\n", r.Failed-10)
			break
		}
		fmt.Fprintf(w, "failure at %.3fs: %s: %s (%s)\n", f.At, f.Kind, f.Error, f.URL)
	}
	fmt.Fprintln(w, verdict)
}

func rateText(rate, workers int) string {
	if rate == 0 {
		return fmt.Sprintf("max with %d workers", workers)
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
	X1, X2 float64
	Label  string
	Title  string
	Failed bool
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

func (r *Report) axes() (xOf func(float64) float64, xTicks []tick, secs float64) {
	secs = math.Max(r.Duration.Seconds(), 1)
	xOf = func(s float64) float64 { return padL + s/secs*(chartW-padL-padR) }
	step := niceMax(secs / 10)
	for s := 0.0; s <= secs+1e-9; s += step {
		xTicks = append(xTicks, tick{xOf(s), fmt.Sprintf("%gs", s)})
	}
	return xOf, xTicks, secs
}

func (r *Report) markers(xOf func(float64) float64) []marker {
	var out []marker
	for _, e := range r.Events {
		x1 := xOf(e.Start.Sub(r.Start).Seconds())
		x2 := math.Max(xOf(e.End.Sub(r.Start).Seconds()), x1+2)
		label := "U"
		if e.Kind == "restart" {
			label = "R " + e.Target
		}
		res := "ok"
		if !e.OK {
			res = "FAILED"
		}
		out = append(out, marker{X1: x1, X2: x2, Label: label, Failed: !e.OK,
			Title: fmt.Sprintf("%s %s at %.2fs, %s, %s: %s", e.Kind, e.Target, e.Start.Sub(r.Start).Seconds(), e.Duration().Round(time.Millisecond), res, e.Detail)})
	}
	return out
}

func (r *Report) latencyChart() chart {
	xOf, xTicks, _ := r.axes()
	var ymax float64
	for _, s := range r.Seconds {
		ymax = math.Max(ymax, s.Max)
	}
	ymax = niceMax(ymax)
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

func (r *Report) throughputChart() chart {
	xOf, xTicks, secs := r.axes()
	var ymax float64
	for _, s := range r.Seconds {
		ymax = math.Max(ymax, float64(s.OK+s.Failed))
	}
	ymax = niceMax(ymax)
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
			c.Bars = append(c.Bars, bar{X: x, Y: fTop, W: bw, H: okTop - fTop, Color: "#d55e00",
				Title: fmt.Sprintf("t=%ds: %d failed", s.T, s.Failed)})
		}
	}
	c.Markers = r.markers(xOf)
	return c
}

// reportTmpl is parsed on first use, not at start-up: baton run never needs it.
var reportTmpl = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("report").Funcs(template.FuncMap{
		"ms": func(d time.Duration) string { return d.Round(time.Millisecond).String() },
		"since": func(r *Report, t time.Time) string {
			return fmt.Sprintf("%.2fs", t.Sub(r.Start).Seconds())
		},
		"sub": func(a, b float64) float64 { return a - b },
	}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>baton soak: {{if .R.Passed}}PASS{{else}}FAIL{{end}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
.pass{color:#007a3d} .fail{color:#c0392b}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
svg{background:#fff;border:1px solid #ddd}
.axis{stroke:#888;stroke-width:1} .grid{stroke:#eee;stroke-width:1}
text{font-size:11px;fill:#555}
.ev{fill:#7b61ff;fill-opacity:.18;stroke:#7b61ff;stroke-opacity:.6}
.evfail{fill:#d55e00;fill-opacity:.35;stroke:#d55e00}
.evlabel{fill:#4b3bbf;font-size:10px}
</style></head><body>
<h1>baton soak — {{if .R.Passed}}<span class="pass">PASS</span>{{else}}<span class="fail">FAIL</span>{{end}}</h1>
<p>{{range .R.Targets}}<code>{{.}}</code> {{end}}<br>
started {{.R.Start.Format "2006-01-02 15:04:05 MST"}}, ran {{ms .R.Duration}}, rate {{.Rate}}, achieved {{printf "%.0f" .R.Achieved}} req/s.
Shaded bands are events (U = baton upgrade, R = backend restart), from request to outcome; red ticks under the latency chart are failed requests.</p>
{{range .Charts}}
<h2>{{.Title}}</h2>
<svg viewBox="0 0 {{.W}} {{.H}}" width="100%" role="img" aria-label="{{.Title}}">
{{range .YTicks}}<line class="grid" x1="60" x2="980" y1="{{.Pos}}" y2="{{.Pos}}"/><text x="54" y="{{.Pos}}" text-anchor="end" dominant-baseline="middle">{{.Label}}</text>
{{end}}{{$c := .}}{{range .XTicks}}<line class="axis" x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$c.Bottom}}" y2="{{$c.Bottom}}" transform="translate(0,0)"/><text x="{{.Pos}}" y="{{$c.H}}" dy="-22" text-anchor="middle">{{.Label}}</text>
{{end}}{{range .Markers}}<rect class="{{if .Failed}}evfail{{else}}ev{{end}} event-marker" x="{{.X1}}" y="{{$c.Top}}" width="{{sub .X2 .X1}}" height="{{sub $c.Bottom $c.Top}}"><title>{{.Title}}</title></rect><text class="evlabel" x="{{.X1}}" y="{{$c.Top}}" dy="-4">{{.Label}}</text>
{{end}}{{range .Bars}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{.Color}}"><title>{{.Title}}</title></rect>
{{end}}{{range .Series}}<polyline fill="none" stroke="{{.Color}}" stroke-width="1.6" points="{{.Points}}"><title>{{.Name}}</title></polyline>
{{end}}{{range .Fails}}<rect class="failure" x="{{.}}" y="{{$c.Bottom}}" width="2" height="8" fill="#d00"><title>failed request</title></rect>
{{end}}<line class="axis" x1="60" x2="980" y1="{{.Bottom}}" y2="{{.Bottom}}"/><line class="axis" x1="60" x2="60" y1="{{.Top}}" y2="{{.Bottom}}"/>
</svg>
{{if .Series}}<p>{{range .Series}}<span style="color:{{.Color}}">&#9632;</span> {{.Name}} &nbsp; {{end}}</p>{{end}}
{{end}}
<h2>Summary</h2>
<table>
<tr><th class="l">requests</th><td>{{.R.Requests}}</td></tr>
<tr><th class="l">succeeded</th><td>{{.R.OK}}</td></tr>
<tr><th class="l">failed</th><td{{if .R.Failed}} class="fail"{{end}}>{{.R.Failed}}</td></tr>
{{range $k, $v := .R.ByKind}}<tr><th class="l">&nbsp; {{$k}}</th><td class="fail">{{$v}}</td></tr>{{end}}
</table>
<table>
<tr><th class="l">latency (ms)</th><th>requests</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>
<tr><td class="l">overall</td><td>{{.R.Latency.Count}}</td><td>{{printf "%.2f" .R.Latency.P50}}</td><td>{{printf "%.2f" .R.Latency.P90}}</td><td>{{printf "%.2f" .R.Latency.P99}}</td><td>{{printf "%.2f" .R.Latency.Max}}</td></tr>
<tr><td class="l">within 1 s of events</td><td>{{.R.NearEvents.Count}}</td><td>{{printf "%.2f" .R.NearEvents.P50}}</td><td>{{printf "%.2f" .R.NearEvents.P90}}</td><td>{{printf "%.2f" .R.NearEvents.P99}}</td><td>{{printf "%.2f" .R.NearEvents.Max}}</td></tr>
</table>
<h2>Events</h2>
<table><tr><th class="l">event</th><th>at</th><th>took</th><th class="l">result</th><th class="l">detail</th></tr>
{{range .R.Events}}<tr><td class="l">{{.Kind}} {{.Target}}</td><td>{{since $.R .Start}}</td><td>{{ms .Duration}}</td><td class="l{{if not .OK}} fail{{end}}">{{if .OK}}ok{{else}}FAILED{{end}}</td><td class="l">{{.Detail}}</td></tr>
{{else}}<tr><td class="l" colspan="5">none</td></tr>{{end}}</table>
{{if .R.Failures}}<h2>Failures (first {{len .R.Failures}})</h2>
<table><tr><th>at</th><th class="l">kind</th><th class="l">error</th><th class="l">url</th></tr>
{{range .R.Failures}}<tr><td>{{printf "%.3fs" .At}}</td><td class="l">{{.Kind}}</td><td class="l">{{.Error}}</td><td class="l">{{.URL}}</td></tr>
{{end}}</table>{{end}}
</body></html>
`))
})

// WriteHTML writes a self-contained HTML page: charts drawn as inline SVG,
// event markers on the time axis, failures in red, and the summary.
func (r *Report) WriteHTML(w io.Writer) error {
	return reportTmpl().Execute(w, map[string]any{
		"R":      r,
		"Rate":   rateText(r.Rate, r.Workers),
		"Charts": []chart{r.latencyChart(), r.throughputChart()},
	})
}
