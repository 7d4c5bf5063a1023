--[[ seating.lua: where a party sits. A library, not a script: scripts.py puts it in front of
hold.lua, so the seats are chosen and claimed in one atomic step (seats chosen outside the script
could go to another shopper before the claim, and a party retrying on a stale map could end up
apart while adjacent seats were free). It defines one pure function of its arguments, which the
tests run alone on a real Redis.

choose_seats(bitmap, rows, party) -> the seat ids, ascending, as "s1,s2,...", or '' when fewer
than `party` seats are free.
  bitmap  the taken seats: bit s set (bit 0 is the high bit of the first byte, as SETBIT
          writes it); bytes past the end are free seats
  rows    the venue's rows front to back, as runs of rows of equal length: "25*40,30*10" is
          40 rows of 25 seats, then 10 rows of 30; seat ids run through them in that order
  party   how many seats

Together whenever any row has `party` adjacent free seats: the frontmost such row; in it, the
shortest free run that fits (long runs stay whole for larger parties; on a tie, the run nearer
the row's centre); in that run, an empty row seats the party at its centre (moved to a multiple
of the party's size from the row's start, so parties of that size can fill the rest of the row
without stranding a seat), otherwise the party sits flush against the run's end nearer the
row's centre, so the rest of the run stays in one piece.
Otherwise apart, as close as can be: the frontmost row with `party` free seats, its tightest
window (ties: leftmost); if no row has that many, the first `party` free seats front to back.

Cost: rows with no free seat are skipped by string.find over full bytes (in C); other rows are
measured a byte at a time (the shape of each byte value is worked out once per call); only the
row chosen, and the few rows the fallbacks need, are walked run by run. The search stops at the
first row that fits.
]]
local function choose_seats(bitmap, rows, party)
  local nbytes = #bitmap
  local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift
  local byte, find, floor = string.byte, string.find, math.floor

  -- the first free seat at or after s
  local function next_free(s)
    while true do
      local i = floor(s / 8)
      if i >= nbytes then return s end
      local b = byte(bitmap, i + 1)
      if b ~= 255 then
        for k = s % 8, 7 do
          if band(b, rshift(128, k)) == 0 then return i * 8 + k end
        end
      end
      local j = find(bitmap, '[^\255]', i + 2)
      if not j then return nbytes * 8 end
      s = (j - 1) * 8
    end
  end

  -- the first taken seat at or after s, or nil
  local function next_taken(s)
    while true do
      local i = floor(s / 8)
      if i >= nbytes then return nil end
      local b = byte(bitmap, i + 1)
      if b ~= 0 then
        for k = s % 8, 7 do
          if band(b, rshift(128, k)) ~= 0 then return i * 8 + k end
        end
      end
      local j = find(bitmap, '[^%z]', i + 2)
      if not j then return nil end
      s = (j - 1) * 8
    end
  end

  -- a byte value's free seats, free seats at its start, at its end, and its longest free run
  local shapes = {}
  local function shape(b)
    local found = shapes[b]
    if found == nil then
      local free, lead, run, longest = 0, 0, 0, 0
      for k = 0, 7 do
        if band(b, rshift(128, k)) == 0 then
          free, run = free + 1, run + 1
          if run > longest then longest = run end
          if lead == k then lead = k + 1 end
        else
          run = 0
        end
      end
      found = {free, lead, run, longest}
      shapes[b] = found
    end
    return found
  end

  -- a row's longest free run and how many free seats it has, a byte at a time
  local function measure(first, len)
    local last = first + len - 1
    local i0, i1 = floor(first / 8), floor(last / 8)
    local run, longest, free = 0, 0, 0
    for i = i0, i1 do
      local b = i < nbytes and byte(bitmap, i + 1) or 0
      -- seats of the byte outside the row count as taken
      if i == i0 then b = bor(b, band(255, lshift(255, 8 - first % 8))) end
      if i == i1 then b = bor(b, rshift(255, last % 8 + 1)) end
      if b == 0 then
        run, free = run + 8, free + 8
      elseif b == 255 then
        if run > longest then longest = run end
        run = 0
      else
        local sh = shape(b)
        free, run = free + sh[1], run + sh[2]
        if run > longest then longest = run end
        if sh[4] > longest then longest = sh[4] end
        run = sh[3]
      end
    end
    if run > longest then longest = run end
    return longest, free
  end

  -- a row's free runs: start, length, start, length, ...
  local function runs_of(first, len)
    local row_end, runs = first + len, {}
    local s = next_free(first)
    while s < row_end do
      local t = next_taken(s)
      local e = (t ~= nil and t < row_end) and t or row_end
      runs[#runs + 1], runs[#runs + 2] = s, e - s
      s = next_free(e)
    end
    return runs
  end

  -- the party together in a row known to have a run that fits
  local function seat_together(runs, first, len)
    local centre2 = 2 * first + len - 1 -- twice the row's centre, to stay in whole numbers
    local best_start, best_len, best_off
    for r = 1, #runs, 2 do
      local start, n = runs[r], runs[r + 1]
      if n >= party then
        local off = math.abs(2 * start + n - 1 - centre2)
        if best_len == nil or n < best_len or (n == best_len and off < best_off) then
          best_start, best_len, best_off = start, n, off
        end
      end
    end
    local start = best_start
    if best_len == len then -- the centre, at a multiple of the party's size from the start
      start = first + party * floor((len - party) / 2 / party + 0.5)
    elseif math.abs(2 * (best_start + best_len - 1) - centre2)
        < math.abs(2 * best_start - centre2) then
      start = best_start + best_len - party -- flush against the run's end nearer the centre
    end
    local chosen = {}
    for k = 1, party do chosen[k] = start + k - 1 end
    return table.concat(chosen, ',')
  end

  local roomy = nil -- free seats of the frontmost row with at least `party` of them
  local spill = {} -- the first `party` free seats front to back
  local first = 0 -- the current row's first seat
  for len_text, count_text in string.gmatch(rows, '(%d+)%*(%d+)') do
    local len = tonumber(len_text)
    local segment_end = first + len * tonumber(count_text)
    while first < segment_end do
      local s = next_free(first)
      if s >= first + len then -- no free seat in this row: on to the row holding seat s
        if s >= segment_end then break end
        first = first + floor((s - first) / len) * len
      end
      local longest, free = measure(first, len)
      local wanted = roomy == nil and free >= party
      if longest >= party or wanted or #spill < party then
        local runs = runs_of(first, len)
        if longest >= party then return seat_together(runs, first, len) end
        local here = {}
        for r = 1, #runs, 2 do
          for seat = runs[r], runs[r] + runs[r + 1] - 1 do
            here[#here + 1] = seat
            if #spill < party then spill[#spill + 1] = seat end
          end
        end
        if wanted then roomy = here end
      end
      first = first + len
    end
    first = segment_end
  end
  if roomy then
    local best_i, best_spread = 1, nil
    for i = 1, #roomy - party + 1 do
      local spread = roomy[i + party - 1] - roomy[i]
      if best_spread == nil or spread < best_spread then best_i, best_spread = i, spread end
    end
    return table.concat(roomy, ',', best_i, best_i + party - 1)
  end
  if #spill == party then return table.concat(spill, ',') end
  return ''
end
